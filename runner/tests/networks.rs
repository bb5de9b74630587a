//! User-defined networks in the lab (one session): `hk network create` makes two networks;
//! three busybox VMs boot with `hk vm boot --net network:NAME`, the first of which starts
//! each network's switch. On network `front`, `alpha` (alias `web`) serves HTTP and `beta`
//! resolves it by name and by alias through the switch's DNS, pings it and fetches from it.
//! `gamma`, on network `back`, takes an address in front's subnet and still reaches
//! nothing there, and back's DNS does not know alpha. After the VMs end, the switches exit
//! on their own and the leases are free again. The VMMs run with their seccomp filters.

use hk_tests::{guest_kernel, run_with_kvm, scratch_dir, Initramfs};
use std::path::Path;
use std::time::Duration;

/// One init for all three: the role, address and gateway come from the kernel command line.
const INIT: &str = r#"
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ctl_exit() { devmem 0xd0000004 32 "$1"; }
for w in $(cat /proc/cmdline); do
    case $w in hk.role=*) role=${w#*=};; hk.ip=*) ip=${w#*=};; hk.dns=*) dns=${w#*=};; esac
done
ip link set lo up
ip link set eth0 up
ip addr add $ip dev eth0
echo "nameserver $dns" >/etc/resolv.conf
echo "mac:$(cat /sys/class/net/eth0/address)"
# The address busybox's nslookup gets for a name from the network's DNS server, or "none".
resolve() {
    a=$(nslookup "$1" "$dns" 2>/dev/null | sed -n '/^Name:/,$ s/^Address[ 0-9]*:[[:space:]]*\([0-9.]*\).*/\1/p' | head -1)
    echo "${a:-none}"
}
get() { printf 'GET / HTTP/1.0\r\n\r\n' | timeout 10 nc "$1" 80 2>/dev/null | tail -1; }
case $role in
alpha)
    mkdir /www
    echo alpha-says-hi >/www/index.html
    httpd -p 80 -h /www
    echo alpha-ready
    # Until the host ends this VM.
    while true; do sleep 60; done
    ;;
beta)
    # alpha may still be booting: wait for its name, then its server.
    i=0
    until [ "$(resolve alpha)" != none ] || [ $i -ge 120 ]; do sleep 1; i=$((i + 1)); done
    a=$(resolve alpha)
    i=0
    until [ "$(get $a)" = alpha-says-hi ] || [ $i -ge 120 ]; do sleep 1; i=$((i + 1)); done
    echo "resolve-alpha:$a"
    echo "resolve-web:$(resolve web)"
    echo "resolve-WEB-upper:$(resolve WEB)"
    echo "resolve-nobody:$(resolve nobody)"
    if ping -c 2 -W 5 "$a" >/dev/null 2>&1; then echo ping-alpha:ok; else echo ping-alpha:fail; fi
    echo "http-by-name:$(get $(resolve alpha))"
    echo "http-by-alias:$(get $(resolve web))"
    echo "gw-arp:$(ping -c 1 -W 3 ${dns} >/dev/null 2>&1; ip neigh show $dns | cut -d' ' -f5)"
    echo beta-done
    ctl_exit 0
    ;;
gamma)
    # An address in front's subnet too: only the segment decides who is reachable.
    ip addr add 10.99.1.9/24 dev eth0
    echo "resolve-alpha:$(resolve alpha)"
    if ping -c 2 -W 3 10.99.1.2 >/dev/null 2>&1; then echo ping-alpha:ok; else echo ping-alpha:fail; fi
    echo "http-alpha:$(get 10.99.1.2)"
    echo gamma-done
    ctl_exit 0
    ;;
esac
ctl_exit 1
"#;

const L1: &str = r#"
set -u
bb=busybox
$bb ip link set lo up
export HK_DATA_DIR=/tmp/hk-data HK_RUNTIME_DIR=/tmp/hk-run
mkdir -p $HK_DATA_DIR $HK_RUNTIME_DIR
"$hk" network create --subnet 10.99.1.0/24 front >create.txt 2>&1
"$hk" network create --subnet 10.99.2.0/24 --internal back >>create.txt 2>&1
"$hk" network ls >ls.txt 2>&1
pin=
if [ "$(nproc)" -gt 1 ] && command -v taskset >/dev/null; then pin='taskset -c 1'; fi
boot() { # NAME NET IP ALIAS...
    name=$1 net=$2 ip=$3; shift 3
    aliases=
    for a in "$@"; do aliases="$aliases --net-alias $a"; done
    $pin "$hk" vm boot --kernel "$kernel" --initrd "$initrd" --memory 128m \
        --net network:$net --net-name $name $aliases --ip ${ip%/*} \
        --console $name.console --cmdline "console=ttyS0 quiet hk.role=$name hk.ip=$ip hk.dns=${ip%.*}.1" \
        2>$name.stderr &
}
boot alpha front 10.99.1.2/24 web
alpha=$!
n=0
until grep -q alpha-ready alpha.console 2>/dev/null || [ $n -ge 900 ] || ! kill -0 $alpha 2>/dev/null; do
    sleep 0.2; n=$((n + 1))
done
"$hk" network rm front >rm-in-use.txt 2>&1; echo $? >rm-in-use.status
boot beta front 10.99.1.3/24
beta=$!
boot gamma back 10.99.2.2/24
gamma=$!
wait $beta; echo $? >beta.status
wait $gamma; echo $? >gamma.status
cat $HK_DATA_DIR/networks/front.leases.json >leases-running.txt 2>&1
kill $alpha; wait $alpha
# Both switches exit a few seconds after their last port left.
n=0
# (`ls a b` fails once either is gone, so test for any that remains.)
socks() { for s in $HK_RUNTIME_DIR/networks/*/switch.sock; do [ -e "$s" ] && return 0; done; return 1; }
while socks && [ $n -lt 100 ]; do
    sleep 0.2; n=$((n + 1))
done
ls $HK_RUNTIME_DIR/networks/*/switch.sock >sockets-after.txt 2>&1
cat $HK_RUNTIME_DIR/networks/*/switch.log >switch.log 2>&1
"$hk" network rm front back >rm.txt 2>&1; echo $? >rm.status
"$hk" network ls -q >ls-after.txt 2>&1
echo done >status
"#;

#[test]
fn vms_on_one_network_reach_each_other_by_name_and_not_across_networks() {
    let dir = scratch_dir("networks");
    let initrd = dir.join("initramfs.cpio.gz");
    Initramfs::new()
        .busybox()
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
        Duration::from_secs(900),
    );
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .unwrap_or_default()
            .replace('\r', "")
    };
    let mut report = format!(
        "lab: {}\n{}\n",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "create.txt",
        "ls.txt",
        "alpha.console",
        "alpha.stderr",
        "beta.console",
        "beta.stderr",
        "gamma.console",
        "gamma.stderr",
        "rm-in-use.txt",
        "leases-running.txt",
        "switch.log",
        "sockets-after.txt",
        "rm.txt",
        "ls-after.txt",
    ] {
        report += &format!("--- {f} ---\n{}\n", read(f));
    }
    let value = |file: &str, key: &str| {
        read(file)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")).map(str::to_string))
            .unwrap_or_else(|| panic!("no {key}: in {file}\n{report}"))
            .trim()
            .to_string()
    };
    assert_eq!(read("status").trim(), "done", "{report}");
    assert_eq!(read("beta.status").trim(), "0", "{report}");
    assert_eq!(read("gamma.status").trim(), "0", "{report}");
    // MACs follow addresses.
    assert_eq!(
        value("alpha.console", "mac"),
        "02:68:0a:63:01:02",
        "{report}"
    );
    // On one network: names, aliases (any case), ping, TCP.
    assert_eq!(
        value("beta.console", "resolve-alpha"),
        "10.99.1.2",
        "{report}"
    );
    assert_eq!(
        value("beta.console", "resolve-web"),
        "10.99.1.2",
        "{report}"
    );
    assert_eq!(
        value("beta.console", "resolve-WEB-upper"),
        "10.99.1.2",
        "{report}"
    );
    assert_eq!(value("beta.console", "resolve-nobody"), "none", "{report}");
    assert_eq!(value("beta.console", "ping-alpha"), "ok", "{report}");
    assert_eq!(
        value("beta.console", "http-by-name"),
        "alpha-says-hi",
        "{report}"
    );
    assert_eq!(
        value("beta.console", "http-by-alias"),
        "alpha-says-hi",
        "{report}"
    );
    assert_eq!(
        value("beta.console", "gw-arp"),
        "02:68:6b:ff:ff:01",
        "{report}"
    );
    // Across networks: nothing, not even with an address in the other's subnet.
    assert_eq!(value("gamma.console", "resolve-alpha"), "none", "{report}");
    assert_eq!(value("gamma.console", "ping-alpha"), "fail", "{report}");
    assert_eq!(value("gamma.console", "http-alpha"), "", "{report}");
    // A network in use is not removed; unused ones are, once the VMs are gone.
    assert_ne!(read("rm-in-use.status").trim(), "0", "{report}");
    assert!(
        read("rm-in-use.txt").contains("is in use by vm:"),
        "{report}"
    );
    assert!(read("leases-running.txt").contains("10.99.1.2"), "{report}");
    assert!(
        read("sockets-after.txt").contains("No such file"),
        "the switches did not exit\n{report}"
    );
    assert_eq!(read("rm.status").trim(), "0", "{report}");
    assert_eq!(read("ls-after.txt").trim(), "", "{report}");
    assert!(!read("beta.stderr").contains("link is down"), "{report}");
}
