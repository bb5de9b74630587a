//! The network's own address (`.1` of its subnet), served inside the switch: it answers
//! ARP for that address and runs the network's DNS server on UDP port 53 there.
//!
//! DNS: an `A` question for a name registered on this network (a container's name, one of
//! its `--network-alias`es, or its short ID, as docker's embedded server answers) is
//! answered here, with every address that carries the name. A registered name asked for
//! another type gets an empty NOERROR answer, so the guest's resolver does not go on to ask
//! the host about it. Anything else is relayed to the host's resolvers (the `nameserver`s
//! of the host's /etc/resolv.conf) through ordinary UDP sockets of the switch's process,
//! which runs on the host: a `127.0.0.53` systemd-resolved or a dnsmasq on loopback works
//! as it does for the host's own programs. The query goes to every upstream at once and the
//! first answer wins (musl's resolver does the same; one dead resolver then costs nothing).
//! An `--internal` network relays nothing: unknown names get NXDOMAIN.
//!
//! Everything here reads what a guest wrote: frames are parsed with `etherparse`, queries
//! with `simple-dns`, and whatever does not parse is dropped. The table of queries waiting
//! for an upstream is bounded ([`MAX_PENDING`]) and entries expire ([`PENDING_TTL`]), so a
//! guest firing queries at a resolver that never answers costs a fixed amount of memory.

use etherparse::{
    ArpEthIpv4Packet, ArpOperation, NetSlice, PacketBuilder, SlicedPacket, TransportSlice,
};
use simple_dns::rdata::{RData, A};
use simple_dns::{Packet, PacketFlag, ResourceRecord, CLASS, QTYPE, RCODE, TYPE};
use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// The gateway's MAC. Every network may use the same one: networks share no segment.
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x68, 0x6b, 0xff, 0xff, 0x01];

pub const DNS_PORT: u16 = 53;

/// Queries waiting for an upstream answer, at most.
pub const MAX_PENDING: usize = 512;

/// How long a relayed query waits for its answer before it is forgotten. The guest's
/// resolver retries on its own schedule (5 s for glibc).
pub const PENDING_TTL: Duration = Duration::from_secs(5);

/// TTL of the answers for names on the network: short, since containers come and go.
const LOCAL_TTL: u32 = 10;

/// A relayed query: where its answer goes back to.
struct Pending {
    id: u16,
    mac: [u8; 6],
    ip: Ipv4Addr,
    port: u16,
    deadline: Instant,
}

pub struct Gateway {
    ip: Ipv4Addr,
    internal: bool,
    /// One connected socket per upstream resolver: the kernel drops datagrams from
    /// anyone else, so an answer is from the server it was asked of.
    upstreams: Vec<UdpSocket>,
    /// By the ID hk put on the relayed query.
    pending: HashMap<u16, Pending>,
    /// IDs in the order they were sent, to expire and to evict the oldest when full.
    order: VecDeque<u16>,
    next_id: u16,
}

impl Gateway {
    /// `upstreams`: the resolvers to relay to (ignored when `internal`). Sockets that
    /// cannot be made are skipped: DNS for names on the network still works.
    pub fn new(ip: Ipv4Addr, internal: bool, upstreams: &[SocketAddr]) -> Gateway {
        let sockets = if internal {
            Vec::new()
        } else {
            upstreams
                .iter()
                .filter_map(|addr| {
                    let bind: SocketAddr = if addr.is_ipv4() {
                        ([0, 0, 0, 0], 0).into()
                    } else {
                        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                    };
                    let s = UdpSocket::bind(bind).ok()?;
                    s.connect(addr).ok()?;
                    s.set_nonblocking(true).ok()?;
                    Some(s)
                })
                .collect()
        };
        Gateway {
            ip,
            internal,
            upstreams: sockets,
            pending: HashMap::new(),
            order: VecDeque::new(),
            next_id: std::process::id() as u16,
        }
    }

    /// The descriptors to poll for upstream answers.
    pub fn upstream_fds(&self) -> Vec<RawFd> {
        self.upstreams.iter().map(|s| s.as_raw_fd()).collect()
    }

    /// A frame addressed to the gateway (or broadcast). Returns the reply frame, if any.
    /// `lookup` gives the addresses registered under a (lowercase) name.
    pub fn handle(
        &mut self,
        frame: &[u8],
        lookup: &dyn Fn(&str) -> Vec<Ipv4Addr>,
        now: Instant,
    ) -> Option<Vec<u8>> {
        let packet = SlicedPacket::from_ethernet(frame).ok()?;
        let src_mac: [u8; 6] = frame.get(6..12)?.try_into().ok()?;
        match packet.net? {
            NetSlice::Arp(arp) => self.arp(&arp.to_packet().try_eth_ipv4().ok()?, src_mac),
            NetSlice::Ipv4(ip) => {
                let header = ip.header();
                if header.destination_addr() != self.ip || ip.is_payload_fragmented() {
                    return None;
                }
                let Some(TransportSlice::Udp(udp)) = packet.transport else {
                    return None;
                };
                if udp.destination_port() != DNS_PORT {
                    return None;
                }
                let client = (src_mac, header.source_addr(), udp.source_port());
                self.dns(udp.payload(), client, lookup, now)
            }
            NetSlice::Ipv6(_) => None,
        }
    }

    fn arp(&self, req: &ArpEthIpv4Packet, src_mac: [u8; 6]) -> Option<Vec<u8>> {
        if req.operation != ArpOperation::REQUEST
            || req.target_ipv4 != self.ip.octets()
            || req.sender_mac != src_mac
        {
            return None;
        }
        let reply = ArpEthIpv4Packet {
            operation: ArpOperation::REPLY,
            sender_mac: GATEWAY_MAC,
            sender_ipv4: self.ip.octets(),
            target_mac: req.sender_mac,
            target_ipv4: req.sender_ipv4,
        };
        let builder = PacketBuilder::ethernet2(GATEWAY_MAC, req.sender_mac).arp(reply.into());
        let mut out = Vec::with_capacity(builder.size());
        builder.write(&mut out).ok()?;
        Some(out)
    }

    fn dns(
        &mut self,
        query: &[u8],
        (mac, ip, port): ([u8; 6], Ipv4Addr, u16),
        lookup: &dyn Fn(&str) -> Vec<Ipv4Addr>,
        now: Instant,
    ) -> Option<Vec<u8>> {
        let parsed = Packet::parse(query).ok()?;
        if parsed.has_flags(PacketFlag::RESPONSE) || parsed.questions.len() != 1 {
            return None;
        }
        let question = &parsed.questions[0];
        let name = question.qname.to_string().to_ascii_lowercase();
        let name = name.trim_end_matches('.');
        let addrs = lookup(name);
        if addrs.is_empty() && !self.internal {
            return self.relay(query, parsed.id(), (mac, ip, port), now);
        }
        let mut reply = Packet::new_reply(parsed.id());
        let rd = parsed.has_flags(PacketFlag::RECURSION_DESIRED);
        reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
        if rd {
            reply.set_flags(PacketFlag::RECURSION_DESIRED);
        }
        reply.questions.push(question.clone());
        if addrs.is_empty() {
            *reply.rcode_mut() = RCODE::NameError;
        } else {
            reply.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
            if matches!(question.qtype, QTYPE::TYPE(TYPE::A) | QTYPE::ANY) {
                for addr in addrs {
                    reply.answers.push(ResourceRecord::new(
                        question.qname.clone(),
                        CLASS::IN,
                        LOCAL_TTL,
                        RData::A(A {
                            address: u32::from(addr),
                        }),
                    ));
                }
            }
        }
        let bytes = reply.build_bytes_vec().ok()?;
        self.udp_to(mac, ip, port, &bytes)
    }

    /// Sends the query to every upstream under a fresh ID; the answer comes back through
    /// [`Gateway::upstream_readable`].
    fn relay(
        &mut self,
        query: &[u8],
        id: u16,
        (mac, ip, port): ([u8; 6], Ipv4Addr, u16),
        now: Instant,
    ) -> Option<Vec<u8>> {
        if self.upstreams.is_empty() {
            return None;
        }
        self.expire(now);
        if self.pending.len() >= MAX_PENDING {
            if let Some(old) = self.order.pop_front() {
                self.pending.remove(&old);
            }
        }
        let mut new_id = self.next_id;
        while self.pending.contains_key(&new_id) {
            new_id = new_id.wrapping_add(1);
        }
        self.next_id = new_id.wrapping_add(1);
        let mut out = query.to_vec();
        out[..2].copy_from_slice(&new_id.to_be_bytes());
        let mut sent = false;
        for s in &self.upstreams {
            sent |= s.send(&out).is_ok();
        }
        if sent {
            self.pending.insert(
                new_id,
                Pending {
                    id,
                    mac,
                    ip,
                    port,
                    deadline: now + PENDING_TTL,
                },
            );
            self.order.push_back(new_id);
        }
        None
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&id) = self.order.front() {
            match self.pending.get(&id) {
                Some(p) if p.deadline > now => break,
                _ => {
                    self.order.pop_front();
                    self.pending.remove(&id);
                }
            }
        }
    }

    /// Reads what the upstreams answered; returns the frames for the guests that asked.
    pub fn upstream_readable(&mut self, now: Instant) -> Vec<Vec<u8>> {
        self.expire(now);
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536];
        for i in 0..self.upstreams.len() {
            // Bounded per call, so one chatty socket cannot hold the switch.
            for _ in 0..64 {
                let Ok(n) = self.upstreams[i].recv(&mut buf) else {
                    break;
                };
                if n < 12 || buf[2] & 0x80 == 0 {
                    continue;
                }
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                // The first answer wins; the other upstreams' find nothing pending.
                let Some(p) = self.pending.remove(&id) else {
                    continue;
                };
                buf[..2].copy_from_slice(&p.id.to_be_bytes());
                if let Some(f) = self.udp_to(p.mac, p.ip, p.port, &buf[..n]) {
                    frames.push(f);
                }
            }
        }
        self.order.retain(|id| self.pending.contains_key(id));
        frames
    }

    fn udp_to(&self, mac: [u8; 6], ip: Ipv4Addr, port: u16, payload: &[u8]) -> Option<Vec<u8>> {
        let builder = PacketBuilder::ethernet2(GATEWAY_MAC, mac)
            .ipv4(self.ip.octets(), ip.octets(), 64)
            .udp(DNS_PORT, port);
        let mut out = Vec::with_capacity(builder.size(payload.len()));
        builder.write(&mut out, payload).ok()?;
        Some(out)
    }
}

/// The nameservers of a resolv.conf, as UDP port 53 addresses.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next() != Some("nameserver") {
                return None;
            }
            // A scoped IPv6 address (fe80::1%eth0) names an interface: not supported.
            let ip: std::net::IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, DNS_PORT))
        })
        .collect()
}

/// Frames for the switch's tests.
#[cfg(test)]
pub mod tests_support {
    use super::*;
    use simple_dns::{Name, Question, QCLASS};

    /// An A query for `name` from a guest to the gateway (10.89.0.1).
    pub fn dns_query_frame(mac: [u8; 6], ip: [u8; 4], name: &str) -> Vec<u8> {
        let mut q = Packet::new_query(99);
        q.questions.push(Question::new(
            Name::new_unchecked(name),
            QTYPE::TYPE(TYPE::A),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        let b = PacketBuilder::ethernet2(mac, GATEWAY_MAC)
            .ipv4(ip, [10, 89, 0, 1], 64)
            .udp(40000, DNS_PORT);
        let mut out = Vec::new();
        b.write(&mut out, &q.build_bytes_vec().unwrap()).unwrap();
        out
    }

    /// The first A record of the answer in a frame.
    pub fn dns_answer_a(frame: &[u8]) -> Option<Ipv4Addr> {
        let p = SlicedPacket::from_ethernet(frame).unwrap();
        let Some(TransportSlice::Udp(udp)) = &p.transport else {
            panic!("not UDP")
        };
        let a = Packet::parse(udp.payload()).unwrap();
        a.answers.iter().find_map(|r| match &r.rdata {
            RData::A(a) => Some(Ipv4Addr::from(a.address)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simple_dns::{Name, Question, QCLASS};

    const GW: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 1);
    const CLIENT_MAC: [u8; 6] = [2, 0x68, 10, 89, 0, 2];
    const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 2);

    fn lookup(name: &str) -> Vec<Ipv4Addr> {
        match name {
            "web" | "www" => vec![Ipv4Addr::new(10, 89, 0, 3)],
            "db" => vec![Ipv4Addr::new(10, 89, 0, 4), Ipv4Addr::new(10, 89, 0, 5)],
            _ => vec![],
        }
    }

    pub fn query(id: u16, name: &str, qtype: TYPE) -> Vec<u8> {
        let mut q = Packet::new_query(id);
        q.set_flags(PacketFlag::RECURSION_DESIRED);
        q.questions.push(Question::new(
            Name::new_unchecked(name),
            QTYPE::TYPE(qtype),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        q.build_bytes_vec().unwrap()
    }

    pub fn udp_frame(payload: &[u8], dst: Ipv4Addr, dport: u16) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(CLIENT_MAC, GATEWAY_MAC)
            .ipv4(CLIENT_IP.octets(), dst.octets(), 64)
            .udp(40000, dport);
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    /// The DNS answer inside a reply frame, checked to go back to the client's port.
    pub fn answer_of(frame: &[u8]) -> Packet<'_> {
        let p = SlicedPacket::from_ethernet(frame).unwrap();
        assert_eq!(&frame[..6], &CLIENT_MAC);
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().source_addr(), GW);
        assert_eq!(ip.header().destination_addr(), CLIENT_IP);
        let Some(TransportSlice::Udp(udp)) = &p.transport else {
            panic!("not UDP")
        };
        assert_eq!((udp.source_port(), udp.destination_port()), (53, 40000));
        Packet::parse(udp.payload()).unwrap()
    }

    fn a_records(p: &Packet) -> Vec<Ipv4Addr> {
        p.answers
            .iter()
            .filter_map(|r| match &r.rdata {
                RData::A(a) => Some(Ipv4Addr::from(a.address)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn arp_for_the_gateway_is_answered_and_nothing_else() {
        let gw = Gateway::new(GW, true, &[]);
        let mut g = gw;
        let req = |target: Ipv4Addr, sender_mac: [u8; 6]| {
            let arp = ArpEthIpv4Packet {
                operation: ArpOperation::REQUEST,
                sender_mac,
                sender_ipv4: CLIENT_IP.octets(),
                target_mac: [0; 6],
                target_ipv4: target.octets(),
            };
            let b = PacketBuilder::ethernet2(CLIENT_MAC, [0xff; 6]).arp(arp.into());
            let mut out = Vec::new();
            b.write(&mut out).unwrap();
            out
        };
        let now = Instant::now();
        let reply = g.handle(&req(GW, CLIENT_MAC), &lookup, now).unwrap();
        assert_eq!(&reply[..6], &CLIENT_MAC);
        assert_eq!(&reply[6..12], &GATEWAY_MAC);
        let p = SlicedPacket::from_ethernet(&reply).unwrap();
        let Some(NetSlice::Arp(arp)) = p.net else {
            panic!()
        };
        let arp = arp.to_packet().try_eth_ipv4().unwrap();
        assert_eq!(arp.operation, ArpOperation::REPLY);
        assert_eq!(arp.sender_mac, GATEWAY_MAC);
        assert_eq!(arp.sender_ipv4, GW.octets());
        assert_eq!(arp.target_ipv4, CLIENT_IP.octets());
        // Another address, and a request whose sender MAC is not the frame's.
        assert!(g
            .handle(&req(Ipv4Addr::new(10, 89, 0, 9), CLIENT_MAC), &lookup, now)
            .is_none());
        assert!(g
            .handle(&req(GW, [2, 0, 0, 0, 0, 9]), &lookup, now)
            .is_none());
    }

    #[test]
    fn names_and_aliases_on_the_network_are_answered() {
        let mut g = Gateway::new(GW, true, &[]);
        let now = Instant::now();
        let f = udp_frame(&query(7, "WEB.", TYPE::A), GW, 53);
        let r = g.handle(&f, &lookup, now).unwrap();
        let a = answer_of(&r);
        assert_eq!(a.id(), 7);
        assert!(a.has_flags(PacketFlag::RESPONSE));
        assert_eq!(a.rcode(), RCODE::NoError);
        assert_eq!(a_records(&a), vec![Ipv4Addr::new(10, 89, 0, 3)]);
        let r = g
            .handle(&udp_frame(&query(8, "db", TYPE::A), GW, 53), &lookup, now)
            .unwrap();
        assert_eq!(a_records(&answer_of(&r)).len(), 2);
        // A known name, another type: empty NOERROR, not relayed.
        let r = g
            .handle(
                &udp_frame(&query(9, "www", TYPE::AAAA), GW, 53),
                &lookup,
                now,
            )
            .unwrap();
        let a = answer_of(&r);
        assert_eq!(a.rcode(), RCODE::NoError);
        assert!(a.answers.is_empty());
        // Internal network: an unknown name is NXDOMAIN.
        let r = g
            .handle(
                &udp_frame(&query(10, "example.com", TYPE::A), GW, 53),
                &lookup,
                now,
            )
            .unwrap();
        assert_eq!(answer_of(&r).rcode(), RCODE::NameError);
    }

    #[test]
    fn unknown_names_are_relayed_to_the_upstream_and_answered_back() {
        let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
        upstream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut g = Gateway::new(GW, false, &[upstream.local_addr().unwrap()]);
        let now = Instant::now();
        let f = udp_frame(&query(0x1234, "example.com", TYPE::A), GW, 53);
        assert!(g.handle(&f, &lookup, now).is_none());
        let mut buf = [0u8; 1500];
        let (n, from) = upstream.recv_from(&mut buf).unwrap();
        let q = Packet::parse(&buf[..n]).unwrap();
        assert_eq!(q.questions[0].qname.to_string(), "example.com");
        let mut answer = Packet::new_reply(q.id());
        answer.questions.push(q.questions[0].clone());
        answer.answers.push(ResourceRecord::new(
            Name::new_unchecked("example.com"),
            CLASS::IN,
            60,
            RData::A(A {
                address: u32::from(Ipv4Addr::new(192, 0, 2, 7)),
            }),
        ));
        let bytes = answer.build_bytes_vec().unwrap();
        // A forged answer with an ID nobody asked for is ignored; then the real one.
        let mut forged = bytes.clone();
        forged[..2].copy_from_slice(&q.id().wrapping_add(1).to_be_bytes());
        upstream.send_to(&forged, from).unwrap();
        upstream.send_to(&bytes, from).unwrap();
        let mut frames = Vec::new();
        for _ in 0..100 {
            frames.extend(g.upstream_readable(now));
            if !frames.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(frames.len(), 1);
        let a = answer_of(&frames[0]);
        assert_eq!(a.id(), 0x1234, "the guest's own ID is restored");
        assert_eq!(a_records(&a), vec![Ipv4Addr::new(192, 0, 2, 7)]);
        // Answered once: a duplicate answer finds nothing pending.
        upstream.send_to(&bytes, from).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(g.upstream_readable(now).is_empty());
    }

    #[test]
    fn pending_queries_are_bounded_and_expire() {
        // An upstream that never answers.
        let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut g = Gateway::new(GW, false, &[upstream.local_addr().unwrap()]);
        let now = Instant::now();
        for i in 0..(MAX_PENDING as u16 * 3) {
            let f = udp_frame(&query(i, &format!("n{i}.example"), TYPE::A), GW, 53);
            assert!(g.handle(&f, &lookup, now).is_none());
        }
        assert_eq!(g.pending.len(), MAX_PENDING);
        assert!(g.order.len() <= MAX_PENDING);
        g.upstream_readable(now + PENDING_TTL + Duration::from_secs(1));
        assert!(g.pending.is_empty() && g.order.is_empty());
    }

    #[test]
    fn hostile_frames_are_dropped() {
        let mut g = Gateway::new(GW, true, &[]);
        let now = Instant::now();
        let good = udp_frame(&query(1, "web", TYPE::A), GW, 53);
        // Every truncation, garbage payloads, other ports and addresses.
        for n in 0..good.len() {
            let _ = g.handle(&good[..n], &lookup, now);
        }
        for payload in [&b""[..], b"\x00", &[0xff; 12], &[0u8; 600], &[0xc0; 40]] {
            assert!(g
                .handle(&udp_frame(payload, GW, 53), &lookup, now)
                .is_none());
        }
        let mut flipped = good.clone();
        for i in 42..flipped.len() {
            flipped[i] ^= 0xa5;
            let _ = g.handle(&flipped, &lookup, now);
        }
        let q = query(1, "web", TYPE::A);
        assert!(g.handle(&udp_frame(&q, GW, 54), &lookup, now).is_none());
        assert!(g
            .handle(
                &udp_frame(&q, Ipv4Addr::new(10, 89, 0, 3), 53),
                &lookup,
                now
            )
            .is_none());
        // A response sent to the server is not answered.
        let mut resp = q.clone();
        resp[2] |= 0x80;
        assert!(g.handle(&udp_frame(&resp, GW, 53), &lookup, now).is_none());
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text =
            "# c\nsearch lan\nnameserver 127.0.0.53\nnameserver ::1\nnameserver fe80::1%eth0\n\
                    nameserver\noptions edns0\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}
