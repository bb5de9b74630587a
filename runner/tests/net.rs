//! virtio-net with passt in the lab (one session): `hk vm boot --net passt` boots a busybox
//! guest that configures eth0 with fixed addresses, fetches a file from an HTTP server on
//! the L1's loopback through passt's gateway mapping (10.0.2.2 is the host), serves one
//! itself, and the L1 fetches that through a passt port forward (-t 18081:80). Bulk both
//! ways: a 16 MiB download and a 16 MiB upload of random bytes arrive whole, sha256 checked
//! on the far side (tests/tools/tcp-tool, a client that keeps its request side open as
//! curl and apk do). The VMM runs with its seccomp filters on.

use hk_tests::{guest_kernel, run_with_kvm, scratch_dir, Initramfs};
use std::path::Path;
use std::time::Duration;

const INIT: &str = r#"
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ctl_exit() { devmem 0xd0000004 32 "$1"; }
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
echo "mtu:$(cat /sys/class/net/eth0/mtu)"
echo "mac:$(cat /sys/class/net/eth0/address)"
get() { printf 'GET /%s HTTP/1.0\r\n\r\n' "$1" | timeout 20 nc 10.0.2.2 18080; }
echo "egress:$(get hello.txt | tail -1)"
big=16777216
echo "down:$(tcp-tool get 10.0.2.2 18080 big.bin | sha256sum | cut -d' ' -f1)"
head -c $big /dev/urandom >/tmp/up
echo "up-sent:$(sha256sum </tmp/up | cut -d' ' -f1)"
echo "up-got:$(tcp-tool put 10.0.2.2 18083 $big </tmp/up)"
rm /tmp/up
mkdir /www
echo guest-says-hi >/www/index.html
httpd -p 80 -h /www
echo ready-for-ingress
i=0
until get done | grep -q '200 OK' || [ $i -ge 60 ]; do sleep 1; i=$((i + 1)); done
ctl_exit 0
"#;

/// The L1's side: an HTTP server on loopback, the VM, and a client for the port forward.
const L1: &str = r#"
set -u
# A passt from mid-2025 or later, where one is installed: Debian 12's (2023-03) repeats a
# bulk download's data without end.
export PATH=/usr/local/bin:$PATH
bb=busybox
www=/run/hk-net-www
mkdir -p $www
echo host-says-hi >$www/hello.txt
head -c 16777216 /dev/urandom >$www/big.bin
sha256sum <$www/big.bin | cut -d' ' -f1 >big.sha
$bb httpd -p 127.0.0.1:18080 -h $www
# The upload's far end: "SIZE\n", SIZE bytes, answered with their sha256.
python3 -c '
import hashlib, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 18083)); s.listen(1); open("sink.ready", "w").close()
c, _ = s.accept(); f = c.makefile("rb"); left = int(f.readline()); h = hashlib.sha256()
while left:
    b = f.read(min(left, 1 << 16))
    if not b: break
    h.update(b); left -= len(b)
c.sendall((h.hexdigest() if not left else "short by %d" % left).encode())
f.close(); c.close()' &
until [ -e sink.ready ]; do sleep 0.2; done
# As in vm_boot.rs: an L2 vCPU on the L1's CPU 0 sometimes goes astray under TCG's SVM.
pin=
if [ "$(nproc)" -gt 1 ] && command -v taskset >/dev/null; then pin='taskset -c 1'; fi
$pin "$hk" vm boot --kernel "$kernel" --initrd "$initrd" --net passt ${HK_NET_TEST_MTU:+--mtu $HK_NET_TEST_MTU} \
    --passt-args "-a 10.0.2.15 -n 24 -g 10.0.2.2 -t 18081:80" \
    --console console.txt --cmdline 'console=ttyS0 quiet' 2>hk.stderr &
pid=$!
n=0
until grep -q ready-for-ingress console.txt 2>/dev/null || [ $n -ge 900 ] || ! kill -0 $pid 2>/dev/null; do
    sleep 0.2; n=$((n + 1))
done
printf 'GET / HTTP/1.0\r\n\r\n' | timeout 20 $bb nc 127.0.0.1 18081 >ingress.txt
touch $www/done
wait $pid
echo $? >status
"#;

#[test]
fn a_guest_reaches_the_hosts_loopback_and_is_reached_through_a_port_forward() {
    let dir = scratch_dir("net");
    let initrd = dir.join("initramfs.cpio.gz");
    let tool = dir.join("tcp-tool");
    let status = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&tool)
        .arg(hk_tests::repo_root().join("tests/tools/tcp-tool.c"))
        .status()
        .expect("run gcc (apt-get install gcc libc6-dev)");
    assert!(status.success(), "gcc tcp-tool");
    Initramfs::new()
        .busybox()
        .file("bin/tcp-tool", std::fs::read(&tool).unwrap(), 0o755)
        .init_script(INIT)
        .write(&initrd)
        .unwrap();
    let script = dir.join("l1.sh");
    std::fs::write(
        &script,
        format!(
            "cd {}\nhk={}\nkernel={}\ninitrd={}\n{L1}",
            dir.display(),
            env!("CARGO_BIN_EXE_hk"),
            guest_kernel().display(),
            initrd.display()
        ),
    )
    .unwrap();
    let out = run_with_kvm(
        Path::new("/bin/sh"),
        &[script.as_os_str()],
        Duration::from_secs(500),
    );
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let console = read("console.txt").replace('\r', "");
    let report = format!(
        "lab: {}\n{}\n--- console ---\n{console}\n--- hk stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        read("hk.stderr")
    );
    let value = |key: &str| {
        console
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .unwrap_or_else(|| panic!("no {key}: line\n{report}"))
            .trim()
            .to_string()
    };
    assert_eq!(read("status").trim(), "0", "{report}");
    assert_eq!(value("mtu"), "65520", "{report}");
    assert_eq!(value("mac"), "02:68:6b:00:00:01", "{report}");
    assert_eq!(value("egress"), "host-says-hi", "{report}");
    assert_eq!(
        value("down"),
        read("big.sha").trim(),
        "16 MiB download\n{report}"
    );
    assert_eq!(value("up-got"), value("up-sent"), "16 MiB upload\n{report}");
    assert!(
        read("ingress.txt").contains("guest-says-hi"),
        "ingress: {:?}\n{report}",
        read("ingress.txt")
    );
    assert!(!read("hk.stderr").contains("link is down"), "{report}");
}
