//! `hk run`'s default network (passt, user-mode) on a real KVM, run by an unprivileged
//! user, against real services on the host's loopback: busybox httpd (TCP), a UDP echo
//! server, dnsmasq as the host's resolver (DNS, and TFTP over UDP). Egress over TCP and
//! UDP, DNS through passt's forwarder, published TCP and UDP ports (fixed and random,
//! `hk port`, `hk ps`), 100 parallel connections through a published port, `--network
//! none`, a taken host port, and a guest flooding UDP and TCP at host sockets that never
//! read while hk's memory is watched. Every case runs in one lab session.
//!
//! The services need root for a moment (port 53, a bind mount over /etc/resolv.conf): in
//! the lab the script is root and the cases then drop to an unprivileged uid; on a host
//! with hardware KVM and a non-root test, they run in a user, mount and network namespace
//! of the test's own, where the user keeps its own uid.

use hk_tests::{guest_kernel, run_with_kvm, scratch_dir};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const UID: u32 = 4243;

/// The guest memory of the flooding container, and how much the flood sends (MiB): more
/// than the whole VM, so a VMM that buffered it could not hide it in the guest's RAM.
const FLOOD_GUEST_MIB: u64 = 128;
const FLOOD_MIB: u64 = 160;

/// The host's services, started as (namespace) root before the cases.
const SERVICES: &str = r#"
set -u
W=$T/work
ip link set lo up
# A networked host's shape (the lab has it; a fresh network namespace does not): passt
# copies its settings from the interface of the default route.
if ! awk 'NR > 1 && $2 == "00000000" { f = 1 } END { exit !f }' /proc/net/route; then
    busybox tunctl -t uplink >/dev/null && ip link set uplink up &&
        ip addr add 192.0.2.2/24 dev uplink && ip route add default via 192.0.2.1
fi
mkdir -p $W/www $W/tftp
echo host-says-hi >$W/www/hello.txt
echo tftp-says-hi >$W/tftp/file.txt
busybox httpd -p 127.0.0.1:18080 -h $W/www
echo 'nameserver 127.0.0.1' >$W/resolv.conf
mount --bind $W/resolv.conf /etc/resolv.conf
dnsmasq -k -C /dev/null --no-resolv --no-hosts --listen-address=127.0.0.1 --bind-interfaces \
    --port=53 --address=/svc.hk.test/192.0.2.77 -x $W/dnsmasq.pid -u "$(id -un)" \
    --log-facility=$W/dnsmasq.log --enable-tftp --tftp-root=$W/tftp --tftp-single-port &
$W/net-tool echo 18090 &
# Sinks that never read: a UDP socket, and a TCP listener that accepts and sleeps.
python3 -c 'import socket, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 18091))
t = socket.socket(); t.bind(("127.0.0.1", 18092)); t.listen(8)
conns = []
while True: conns.append(t.accept())' &
sleep 1
"#;

/// Each case: a name and its shell lines, run as the unprivileged user with `$hk` and the
/// demo image loaded; stdout, stderr and status land in NAME.out, NAME.err, NAME.status.
const CASES: &[(&str, &str)] = &[
    ("load", "$hk load -i hk-demo.tar"),
    (
        "egress-tcp",
        "$hk run --rm hk-demo sh -c 'get() { printf \"GET /hello.txt HTTP/1.0\\r\\n\\r\\n\" | nc $1 18080 | tail -1; }; \
         get 10.0.2.2; grep -c host.hk.internal /etc/hosts; get host.docker.internal'",
    ),
    (
        "egress-udp",
        "$hk run --rm -i hk-demo sh -c 'cat >/tmp/u && chmod +x /tmp/u && /tmp/u ask 10.0.2.2 18090 hello-udp-egress' <net-tool",
    ),
    (
        "dns",
        "$hk run --rm hk-demo sh -c 'grep nameserver /etc/resolv.conf; nslookup -type=a svc.hk.test; nslookup -type=a svc.hk.test 10.0.2.2'",
    ),
    (
        "tftp",
        "$hk run --rm hk-demo sh -c 'cd /tmp && tftp -g -r file.txt 10.0.2.2 && cat file.txt'",
    ),
    (
        "publish",
        "$hk run -d --name web -p 18081:80 -p 18083:9000/udp -p 80 -p 18084:8080 hk-demo \
           sh -c 'mkdir -p /www; echo guest-says-hi >/www/index.html; httpd -p 80 -h /www; sleep 100000' >/dev/null; \
         $hk exec -i web sh -c 'cat >/tmp/u; chmod +x /tmp/u' <net-tool; $hk exec -d web /tmp/u echo 9000; \
         $hk exec -d web /tmp/u serve 8080 served-by-net-tool; \
         get() { printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc 127.0.0.1 $1 | tail -1; }; \
         n=0; until [ \"$(get 18081)\" = guest-says-hi ] || [ $n -ge 60 ]; do sleep 0.5; n=$((n + 1)); done; \
         echo fixed=$(get 18081); \
         random=$($hk port web 80 | grep -v ':18081$' | cut -d: -f2); echo random=$(get $random); \
         echo udp=$(./net-tool ask 127.0.0.1 18083 hello-udp-ingress); \
         $hk port web | sort; $hk ps --format json | grep -o '\"Ports\":\"[^\"]*\"'; \
         $hk inspect web | grep -E '\"(IPAddress|Gateway|NetworkMode)\"'",
    ),
    (
        "parallel",
        "for i in $(seq 1 100); do (printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc 127.0.0.1 18084 >par.$i 2>&1) & done; wait; \
         cat par.* | grep -c served-by-net-tool; $hk rm -f web >/dev/null",
    ),
    (
        "none",
        "$hk run --rm --network none hk-demo sh -c 'ls /sys/class/net; \
         printf \"GET / HTTP/1.0\\r\\n\\r\\n\" | nc -w 3 10.0.2.2 18080; echo nc=$?'",
    ),
    ("port-taken", "$hk run --rm -p 18080:80 hk-demo true"),
    // User-defined networks: names and aliases through the network's DNS, egress kept,
    // nothing across networks.
    (
        "user-network",
        "$hk network create front >/dev/null; $hk network create back >/dev/null; \
         $hk run -d --name alpha --network front --network-alias web hk-demo \
           sh -c 'mkdir -p /www; echo alpha-says-hi >/www/index.html; httpd -p 80 -h /www; sleep 100000' >/dev/null; \
         ip=$($hk inspect alpha | grep -A4 '\"front\"' | grep IPAddress | cut -d'\"' -f4); echo alpha-ip=${ip%.*}.x; \
         $hk run --rm --name beta --network front hk-demo sh -c 'get() { printf \"GET / HTTP/1.0\\r\\n\\r\\n\" | nc -w 5 $1 80 | tail -1; }; \
           n=0; until [ \"$(get alpha)\" = alpha-says-hi ] || [ $n -ge 60 ]; do sleep 0.5; n=$((n + 1)); done; \
           echo by-name=$(get alpha); echo by-alias=$(get web); \
           echo egress=$(printf \"GET /hello.txt HTTP/1.0\\r\\n\\r\\n\" | nc -w 5 10.0.2.2 18080 | tail -1); \
           nslookup svc.hk.test | grep -c 192.0.2.77'; \
         $hk run --rm --name gamma --network back -e IP=$ip hk-demo sh -c 'nslookup alpha >/dev/null 2>&1; echo resolve=$?; \
           printf \"GET / HTTP/1.0\\r\\n\\r\\n\" | nc -w 5 $IP 80; echo reach=$?'; \
         $hk network rm front; echo rm-in-use=$?; $hk rm -f alpha >/dev/null; \
         $hk network rm front back",
    ),
    (
        "flood",
        "$hk run -d --name flood -m {FLOOD_GUEST_MIB}m hk-demo sleep 100000 >/dev/null; \
         pid=$($hk inspect flood | grep '\"Pid\"' | tr -dc 0-9); \
         $hk exec -i flood sh -c 'cat >/tmp/u; chmod +x /tmp/u' <net-tool; \
         grep VmHWM /proc/$pid/status; \
         $hk exec flood /tmp/u flood 10.0.2.2 18091 {FLOOD_MIB}; \
         $hk exec flood sh -c 'dd if=/dev/zero bs=64k count={FLOOD_BLOCKS} 2>/dev/null | timeout 20 nc 10.0.2.2 18092; echo tcp-flood-ended'; \
         grep VmHWM /proc/$pid/status; $hk exec flood echo still-alive; $hk rm -f flood",
    ),
];

#[derive(Debug)]
struct Case {
    status: i32,
    out: String,
    err: String,
}

fn lab() -> &'static HashMap<String, Case> {
    static LAB: OnceLock<HashMap<String, Case>> = OnceLock::new();
    LAB.get_or_init(|| {
        let dir = scratch_dir("run-net");
        let out = Command::new(hk_tests::repo_root().join("scripts/demo-image"))
            .arg(dir.join("hk-demo.tar"))
            .output()
            .unwrap();
        assert!(out.status.success(), "demo-image: {out:?}");
        let status = Command::new("gcc")
            .args(["-static", "-O2", "-Wall", "-o"])
            .arg(dir.join("net-tool"))
            .arg(hk_tests::repo_root().join("tests/tools/net-tool.c"))
            .status()
            .expect("run gcc (apt-get install gcc libc6-dev)");
        assert!(status.success(), "gcc net-tool");
        std::fs::copy(guest_kernel(), dir.join("vmlinux")).unwrap();
        // hk is stripped (the lab reads it over 9p) and, with the agent and every input,
        // copied into memory the unprivileged user can reach.
        let hk = Path::new(env!("CARGO_BIN_EXE_hk"));
        let status = Command::new("strip")
            .arg("-o")
            .arg(dir.join("hk"))
            .arg(hk)
            .status()
            .unwrap();
        assert!(status.success(), "strip hk");
        let agent = hk
            .parent()
            .unwrap()
            .join("../x86_64-unknown-linux-gnu/agent/hk-agent");
        std::fs::copy(&agent, dir.join("hk-agent"))
            .unwrap_or_else(|e| panic!("{}: {e} (build the static agent first)", agent.display()));

        let mut cases = String::from(
            "pin=\nif [ \"$(nproc)\" -gt 1 ] && command -v taskset >/dev/null; then pin='taskset -c 1'; fi\n\
             export HK_KERNEL=$T/work/vmlinux HK_AGENT=$T/bin/hk-agent HK_CACHE_DIR=$T/cache \
             HK_RUNTIME_DIR=$T/run HK_DATA_DIR=$T/data HOME=$T/home\n\
             hk=\"$pin $T/bin/hk\"\nexport hk\ncd $T/work\n",
        );
        for (name, lines) in CASES {
            let lines = lines
                .replace("{FLOOD_GUEST_MIB}", &FLOOD_GUEST_MIB.to_string())
                .replace("{FLOOD_MIB}", &FLOOD_MIB.to_string())
                .replace("{FLOOD_BLOCKS}", &(FLOOD_MIB * 16).to_string());
            std::fs::write(dir.join(format!("{name}.sh")), format!("{lines}\n")).unwrap();
            cases.push_str(&format!(
                "echo '[case {name}]' >&2\ntimeout 300 bash ./{name}.sh >{name}.out 2>{name}.err </dev/null\necho $? >{name}.status\n"
            ));
        }
        cases.push_str(
            "{ ls -A $HK_DATA_DIR/containers | grep -v '^names$'; ls -A $HK_RUNTIME_DIR/run 2>/dev/null; \
             pgrep -u $(id -u) -x hk; pgrep -u $(id -u) -x passt; } >leftover.out 2>&1\necho done\n",
        );
        std::fs::write(dir.join("cases.sh"), cases).unwrap();
        std::fs::write(dir.join("services.sh"), SERVICES).unwrap();
        let wrapper = format!(
            "set -e\nT=$(mktemp -d /tmp/hk-run-net.XXXXXX)\nchmod 755 $T\n\
             mkdir -p $T/home $T/cache $T/bin $T/work $T/data\ncp {dir}/hk {dir}/hk-agent $T/bin/\n\
             cp {dir}/*.sh {dir}/hk-demo.tar {dir}/net-tool {dir}/vmlinux $T/work/\nset +e\n\
             if [ \"$(id -u)\" = 0 ]; then\n\
               g=$(stat -c %g /dev/kvm)\n\
               if [ \"$g\" = 0 ]; then g={gid}; chgrp $g /dev/kvm; chmod g+rw /dev/kvm; fi\n\
               chown -R {UID}:{UID} $T\n\
               export T\necho '[services]' >&2\n. $T/work/services.sh\necho '[cases]' >&2\n\
               setpriv --reuid={UID} --regid={UID} --groups=$g --inh-caps=-all \
                 --bounding-set=-all env T=$T bash $T/work/cases.sh\n\
             else\n\
               unshare --user --map-current-user --keep-caps --mount --net env T=$T bash -c \
                 '. $T/work/services.sh; setpriv --inh-caps=-all --ambient-caps=-all --bounding-set=-all bash $T/work/cases.sh'\n\
             fi\nstatus=$?\n\
             cp $T/work/*.out $T/work/*.err $T/work/*.status {dir}/\nexit $status\n",
            dir = dir.display(),
            gid = UID + 1,
        );
        let wrapper_path = dir.join("wrapper.sh");
        std::fs::write(&wrapper_path, wrapper).unwrap();
        let out = run_with_kvm(
            Path::new("/bin/bash"),
            &[wrapper_path.as_os_str()],
            Duration::from_secs(1500),
        );
        assert!(
            out.status.success(),
            "the case script failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let read = |file: String| std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
        let mut cases: HashMap<String, Case> = CASES
            .iter()
            .map(|(name, _)| {
                let case = Case {
                    status: read(format!("{name}.status")).trim().parse().unwrap_or(-1),
                    out: read(format!("{name}.out")),
                    err: read(format!("{name}.err")),
                };
                (name.to_string(), case)
            })
            .collect();
        cases.insert(
            "leftover".into(),
            Case {
                status: 0,
                out: read("leftover.out".into()),
                err: String::new(),
            },
        );
        cases
    })
}

fn case(name: &str) -> &'static Case {
    let c = &lab()[name];
    assert_eq!(lab()["load"].status, 0, "hk load: {:?}", lab()["load"]);
    c
}

#[test]
fn egress_reaches_a_tcp_server_on_the_hosts_loopback_by_gateway_and_by_name() {
    let c = case("egress-tcp");
    assert_eq!(c.status, 0, "{c:?}");
    assert_eq!(c.out, "host-says-hi\n1\nhost-says-hi\n", "{c:?}");
}

#[test]
fn egress_reaches_a_udp_server_on_the_hosts_loopback() {
    let c = case("egress-udp");
    assert_eq!(
        (c.status, c.out.as_str()),
        (0, "hello-udp-egress\n"),
        "{c:?}"
    );
    let c = case("tftp");
    assert_eq!((c.status, c.out.as_str()), (0, "tftp-says-hi\n"), "{c:?}");
}

#[test]
fn names_resolve_through_the_hosts_resolver() {
    let c = case("dns");
    assert_eq!(c.status, 0, "{c:?}");
    assert!(c.out.starts_with("nameserver 10.0.2.3\n"), "{c:?}");
    // Once through passt's forwarder to the host's resolver, once asking the host's
    // loopback server directly through the gateway.
    assert_eq!(c.out.matches("Address: 192.0.2.77").count(), 2, "{c:?}");
}

#[test]
fn published_tcp_and_udp_ports_answer_from_the_host() {
    let c = case("publish");
    assert_eq!(c.status, 0, "{c:?}");
    let lines: Vec<&str> = c.out.lines().collect();
    assert_eq!(lines[0], "fixed=guest-says-hi", "{c:?}");
    assert_eq!(lines[1], "random=guest-says-hi", "{c:?}");
    assert_eq!(lines[2], "udp=hello-udp-ingress", "{c:?}");
    // hk port: four bindings, the random one in the ephemeral range.
    let ports: Vec<&str> = lines[3..7].to_vec();
    assert!(ports.contains(&"8080/tcp -> 0.0.0.0:18084"), "{c:?}");
    assert!(ports.contains(&"80/tcp -> 0.0.0.0:18081"), "{c:?}");
    assert!(ports.contains(&"9000/udp -> 0.0.0.0:18083"), "{c:?}");
    let random = ports
        .iter()
        .find(|p| p.starts_with("80/tcp") && !p.ends_with(":18081"))
        .unwrap_or_else(|| panic!("no random port: {c:?}"));
    let port: u16 = random.rsplit(':').next().unwrap().parse().unwrap();
    assert!(port >= 1024, "{c:?}");
    assert!(
        lines[7].contains("0.0.0.0:18081->80/tcp")
            && lines[7].contains("0.0.0.0:18083->9000/udp")
            && lines[7].contains(&format!("0.0.0.0:{port}->80/tcp")),
        "{c:?}"
    );
    assert!(c.out.contains("\"IPAddress\": \"10.0.2.100\""), "{c:?}");
    assert!(c.out.contains("\"NetworkMode\": \"passt\""), "{c:?}");
}

#[test]
fn a_hundred_parallel_connections_through_a_published_port_all_complete() {
    let c = case("parallel");
    assert_eq!((c.status, c.out.trim()), (0, "100"), "{c:?}");
}

#[test]
fn network_none_has_only_loopback_and_no_egress() {
    let c = case("none");
    assert_eq!(c.status, 0, "{c:?}");
    assert!(c.out.starts_with("lo\n"), "{c:?}");
    assert!(!c.out.contains("eth"), "{c:?}");
    assert!(c.out.contains("nc=1"), "{c:?}");
    assert!(!c.out.contains("host-says-hi"), "{c:?}");
}

#[test]
fn a_taken_host_port_is_refused_before_the_vm_boots() {
    let c = case("port-taken");
    assert_eq!(c.status, 125, "{c:?}");
    assert!(c.err.contains("already allocated"), "{c:?}");
    assert_eq!(c.err.lines().count(), 1, "{c:?}");
}

#[test]
fn a_guest_flooding_sockets_that_never_read_keeps_hks_memory_bounded() {
    let c = case("flood");
    assert_eq!(c.status, 0, "{c:?}");
    let hwm: Vec<u64> = c
        .out
        .lines()
        .filter_map(|l| l.strip_prefix("VmHWM:"))
        .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap())
        .collect();
    assert_eq!(hwm.len(), 2, "{c:?}");
    let sent: u64 = c
        .out
        .lines()
        .find_map(|l| l.strip_prefix("sent "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no sent line: {c:?}"));
    assert!(
        sent >= FLOOD_MIB << 20,
        "the flood did not send it all: {c:?}"
    );
    assert!(c.out.contains("tcp-flood-ended"), "{c:?}");
    assert!(c.out.contains("still-alive"), "{c:?}");
    // The flood is larger than the guest's RAM; hk's peak may grow by the guest's own pages
    // it touched, but not by what it was sent.
    let grown_mib = hwm[1].saturating_sub(hwm[0]) / 1024;
    assert!(
        grown_mib < FLOOD_GUEST_MIB,
        "hk's peak RSS grew by {grown_mib} MiB during a {FLOOD_MIB} MiB flood: {c:?}"
    );
}

#[test]
fn containers_on_one_network_reach_each_other_by_name_and_alias_and_not_across_networks() {
    let c = case("user-network");
    assert_eq!(c.status, 0, "{c:?}");
    let l: Vec<&str> = c.out.lines().collect();
    assert_eq!(l[0], "alpha-ip=10.89.0.x", "{c:?}");
    assert_eq!(l[1], "by-name=alpha-says-hi", "{c:?}");
    assert_eq!(l[2], "by-alias=alpha-says-hi", "{c:?}");
    assert_eq!(l[3], "egress=host-says-hi", "{c:?}");
    // Names outside the network are relayed to the host's resolver.
    assert_eq!(l[4], "1", "{c:?}");
    assert_eq!(l[5], "resolve=1", "{c:?}");
    assert_eq!(l[6], "reach=1", "{c:?}");
    assert_ne!(l[7], "rm-in-use=0", "{c:?}");
    assert!(c.err.contains("in use"), "{c:?}");
}

#[test]
fn nothing_is_left_behind() {
    let c = case("leftover");
    assert_eq!(c.out, "", "containers, sockets or processes left: {c:?}");
}
