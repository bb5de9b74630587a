//! The network's switch: one process per network (`hk network serve NAME`), one port per
//! VM NIC, each port a Unix stream socket.
//!
//! A port begins with a registration: one frame of 4-byte big-endian length and JSON
//! ([`Registration`]), answered by one such frame (`{"ok":true}` or `{"error":"..."}`).
//! From then on the socket carries Ethernet frames in qemu's stream framing (the same
//! 4-byte length, then the frame), which is what the VMM's `NetBackend::Stream` speaks, so
//! the supervisor hands the very socket to its VM.
//!
//! Forwarding: a port's only allowed source MAC is the registered one; a frame with any
//! other source is dropped (no spoofing, and so no MAC table to poison or overflow). That
//! makes the forwarding table exactly the registrations: a learning switch whose learning
//! is done at registration, before any frame. Unicast to a registered MAC goes to its
//! port; broadcast, multicast and unknown unicast go to every other port; frames for the
//! gateway's MAC (and broadcasts, for ARP) also go to the [`Gateway`].
//!
//! Memory is bounded whatever the guests do: each port has one fixed receive buffer and a
//! send queue of at most [`TX_QUEUE_MAX`] bytes. A frame for a port whose queue is full is
//! dropped, as a real switch drops at a congested egress port: a guest that floods, or one
//! that stops reading, costs its neighbours only their own dropped frames. A port that
//! sends a length outside 14..=65535 is disconnected.
//!
//! The loop is single-threaded `poll(2)` over the listener, the ports and the DNS
//! upstream sockets: a switch carries a handful of ports, and one thread keeps it simple
//! to reason about and cheap at rest.

use super::gateway::{Gateway, GATEWAY_MAC};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// Bytes queued for one port, framing included, at most.
pub const TX_QUEUE_MAX: usize = 1 << 20;

/// Frames read from one port per pass, so a flooding port cannot starve the others.
const RX_BURST: usize = 64;

/// A registration frame, at most.
pub const MAX_CONTROL_FRAME: usize = 64 << 10;

/// How long a new connection has to register.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections waiting to register, at most; more are refused.
const MAX_UNREGISTERED: usize = 64;

/// Ethernet frames: a header at least, at most what an IP packet's 16-bit length allows.
const MIN_FRAME: usize = 14;
const MAX_FRAME: usize = 65535;

/// What a VM's supervisor tells the switch about its NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The container's ID (or another unique holder, for `hk vm boot`).
    pub id: String,
    /// The container's name, resolvable on the network.
    pub name: String,
    /// `--network-alias`es, resolvable too.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `aa:bb:cc:dd:ee:ff`: the only source address the port may use.
    pub mac: String,
    pub ipv4: Ipv4Addr,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default)]
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Writes one control frame (length, JSON).
pub fn write_control(stream: &mut UnixStream, value: &impl Serialize) -> std::io::Result<()> {
    let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    stream.write_all(&frame)
}

/// Reads one control frame, reading exactly its bytes (what follows is Ethernet).
pub fn read_control<T: for<'de> Deserialize<'de>>(stream: &mut UnixStream) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_CONTROL_FRAME {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("a control frame of {len} bytes"),
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))
}

pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| {
            (b.len() == 2)
                .then(|| u8::from_str_radix(b, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// The subnet a switch serves.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    pub subnet: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

impl Segment {
    fn contains_host(&self, ip: Ipv4Addr) -> bool {
        let mask = super::mask(self.prefix);
        let net = u32::from(self.subnet) & mask;
        let ip = u32::from(ip);
        ip & mask == net && ip != net && ip != net | !mask && ip != u32::from(self.gateway)
    }
}

struct Port {
    stream: UnixStream,
    reg: Registration,
    mac: [u8; 6],
    /// Bytes read and not yet a whole frame.
    rx: Box<[u8]>,
    rx_len: usize,
    /// Framed frames waiting to be written; `tx_off` bytes of the first already are.
    tx: VecDeque<Vec<u8>>,
    tx_bytes: usize,
    tx_off: usize,
}

impl Port {
    /// Queues a frame, or drops it when the queue is full.
    fn enqueue(&mut self, frame: &[u8]) -> bool {
        let len = frame.len() + 4;
        if self.tx_bytes + len > TX_QUEUE_MAX {
            return false;
        }
        let mut framed = Vec::with_capacity(len);
        framed.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        framed.extend_from_slice(frame);
        self.tx.push_back(framed);
        self.tx_bytes += len;
        true
    }

    /// Writes what the socket takes. Err: the peer is gone.
    fn flush(&mut self) -> std::io::Result<()> {
        while let Some(front) = self.tx.front() {
            match self.stream.write(&front[self.tx_off..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.tx_off += n;
                    if self.tx_off == front.len() {
                        self.tx_bytes -= front.len();
                        self.tx.pop_front();
                        self.tx_off = 0;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A connection that has not registered yet (read with blocking-free steps).
struct Unregistered {
    stream: UnixStream,
    buf: Vec<u8>,
    deadline: Instant,
}

/// Counters, for tests and the switch's log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub forwarded: u64,
    pub dropped_full: u64,
    pub dropped_spoofed: u64,
}

pub struct Switch {
    segment: Segment,
    listener: Option<UnixListener>,
    ports: Vec<Option<Port>>,
    unregistered: Vec<Unregistered>,
    gateway: Gateway,
    pub stats: Stats,
    /// When the last port left (or the switch started with none).
    idle_since: Option<Instant>,
}

impl Switch {
    pub fn new(segment: Segment, gateway: Gateway, listener: Option<UnixListener>) -> Switch {
        if let Some(l) = &listener {
            let _ = l.set_nonblocking(true);
        }
        Switch {
            segment,
            listener,
            ports: Vec::new(),
            unregistered: Vec::new(),
            gateway,
            stats: Stats::default(),
            idle_since: Some(Instant::now()),
        }
    }

    /// Adds a port whose registration was read already. Err: why it is refused.
    pub fn add_port(&mut self, stream: UnixStream, reg: Registration) -> Result<(), String> {
        let mac = self.check(&reg)?;
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        let port = Port {
            stream,
            reg,
            mac,
            rx: vec![0u8; 2 * (MAX_FRAME + 4)].into_boxed_slice(),
            rx_len: 0,
            tx: VecDeque::new(),
            tx_bytes: 0,
            tx_off: 0,
        };
        match self.ports.iter().position(Option::is_none) {
            Some(i) => self.ports[i] = Some(port),
            None => self.ports.push(Some(port)),
        }
        self.idle_since = None;
        Ok(())
    }

    /// Whether `reg` may join: its MAC and address are valid and free. Returns the MAC.
    fn check(&self, reg: &Registration) -> Result<[u8; 6], String> {
        let mac = parse_mac(&reg.mac).ok_or_else(|| format!("bad MAC address {:?}", reg.mac))?;
        if mac[0] & 1 != 0 || mac == GATEWAY_MAC || mac == [0; 6] {
            return Err(format!("MAC address {} cannot be a port's", reg.mac));
        }
        if !self.segment.contains_host(reg.ipv4) {
            return Err(format!(
                "{} is not a host address of {}/{} other than the gateway",
                reg.ipv4, self.segment.subnet, self.segment.prefix
            ));
        }
        for p in self.ports.iter().flatten() {
            if p.mac == mac {
                return Err(format!("MAC address {} is in use on this network", reg.mac));
            }
            if p.reg.ipv4 == reg.ipv4 {
                return Err(format!("{} is in use on this network", reg.ipv4));
            }
        }
        Ok(mac)
    }

    pub fn port_count(&self) -> usize {
        self.ports.iter().flatten().count()
    }

    /// How long the switch has had no port, if it has none.
    pub fn idle_for(&self, now: Instant) -> Option<Duration> {
        self.idle_since.map(|t| now.saturating_duration_since(t))
    }

    /// The addresses registered under `name` (a container name, alias or short ID).
    fn lookup(ports: &[Option<Port>], name: &str) -> Vec<Ipv4Addr> {
        ports
            .iter()
            .flatten()
            .filter(|p| {
                p.reg.name.eq_ignore_ascii_case(name)
                    || p.reg.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
                    || (name.len() == 12 && p.reg.id.get(..12) == Some(name))
            })
            .map(|p| p.reg.ipv4)
            .collect()
    }

    /// One pass: waits up to `timeout` for something to do, then does it.
    pub fn poll_once(&mut self, timeout: Duration) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let pfd = |fd: RawFd, events: i16| libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        if let Some(l) = &self.listener {
            fds.push(pfd(l.as_raw_fd(), libc::POLLIN));
        }
        let upstream = self.gateway.upstream_fds();
        for &fd in &upstream {
            fds.push(pfd(fd, libc::POLLIN));
        }
        for u in &self.unregistered {
            fds.push(pfd(u.stream.as_raw_fd(), libc::POLLIN));
        }
        for p in self.ports.iter().flatten() {
            let mut ev = libc::POLLIN;
            if !p.tx.is_empty() {
                ev |= libc::POLLOUT;
            }
            fds.push(pfd(p.stream.as_raw_fd(), ev));
        }
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        let now = Instant::now();
        if n < 0 {
            return;
        }
        let ready = |fd: RawFd| {
            fds.iter()
                .find(|p| p.fd == fd)
                .is_some_and(|p| p.revents != 0)
        };
        if self.listener.as_ref().is_some_and(|l| ready(l.as_raw_fd())) {
            self.accept(now);
        }
        if upstream.iter().any(|&fd| ready(fd)) {
            for frame in self.gateway.upstream_readable(now) {
                self.deliver(None, &frame);
            }
        }
        self.registrations(now);
        for i in 0..self.ports.len() {
            let Some(p) = &self.ports[i] else { continue };
            if ready(p.stream.as_raw_fd()) {
                self.read_port(i, now);
            }
        }
        for i in 0..self.ports.len() {
            if let Some(p) = &mut self.ports[i] {
                if p.flush().is_err() {
                    self.drop_port(i, now);
                }
            }
        }
    }

    fn accept(&mut self, now: Instant) {
        let Some(listener) = &self.listener else {
            return;
        };
        while let Ok((stream, _)) = listener.accept() {
            if self.unregistered.len() >= MAX_UNREGISTERED || stream.set_nonblocking(true).is_err()
            {
                continue;
            }
            self.unregistered.push(Unregistered {
                stream,
                buf: Vec::new(),
                deadline: now + REGISTER_TIMEOUT,
            });
        }
    }

    /// Reads registrations without blocking; a complete one becomes a port (or a refusal).
    fn registrations(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.unregistered.len() {
            let u = &mut self.unregistered[i];
            let mut done = now >= u.deadline;
            let mut chunk = [0u8; 4096];
            // Only up to the frame's end: the bytes after it are Ethernet frames.
            let want = if u.buf.len() < 4 {
                4 - u.buf.len()
            } else {
                let len = u32::from_be_bytes(u.buf[..4].try_into().unwrap()) as usize;
                (4 + len).saturating_sub(u.buf.len()).min(chunk.len())
            };
            match u.stream.read(&mut chunk[..want]) {
                Ok(0) => done = true,
                Ok(n) => u.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => done = true,
            }
            let complete = u.buf.len() >= 4 && {
                let len = u32::from_be_bytes(u.buf[..4].try_into().unwrap()) as usize;
                if len > MAX_CONTROL_FRAME {
                    done = true;
                }
                u.buf.len() == 4 + len
            };
            if complete {
                let u = self.unregistered.swap_remove(i);
                self.register(u.stream, &u.buf[4..]);
                continue;
            }
            if done {
                self.unregistered.swap_remove(i);
                continue;
            }
            i += 1;
        }
    }

    fn register(&mut self, mut stream: UnixStream, body: &[u8]) {
        let checked = serde_json::from_slice::<Registration>(body)
            .map_err(|e| format!("bad registration: {e}"))
            .and_then(|reg| self.check(&reg).map(|_| reg));
        let reg = match checked {
            Ok(reg) => reg,
            Err(e) => return refuse(&mut stream, e),
        };
        // The reply is small: it fits the socket's buffer, so blocking is brief.
        let ok = Reply {
            ok: true,
            error: None,
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        if write_control(&mut stream, &ok).is_err() {
            return;
        }
        let summary = format!("{} {} {}", reg.name, reg.mac, reg.ipv4);
        match self.add_port(stream, reg) {
            Ok(()) => eprintln!("hk-switch: joined: {summary}"),
            Err(e) => eprintln!("hk-switch: {summary}: {e}"),
        }
    }

    fn drop_port(&mut self, i: usize, now: Instant) {
        if let Some(p) = self.ports[i].take() {
            eprintln!("hk-switch: left: {} {}", p.reg.name, p.reg.mac);
        }
        if self.port_count() == 0 {
            self.idle_since = Some(now);
        }
    }

    /// Reads up to a burst of frames from port `i` and forwards them.
    fn read_port(&mut self, i: usize, now: Instant) {
        let mut frames = Vec::new();
        let mut gone = false;
        {
            let Some(p) = &mut self.ports[i] else { return };
            'read: while frames.len() < RX_BURST {
                match p.stream.read(&mut p.rx[p.rx_len..]) {
                    Ok(0) => {
                        gone = true;
                        break;
                    }
                    Ok(n) => p.rx_len += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        gone = true;
                        break;
                    }
                }
                let mut at = 0;
                while p.rx_len - at >= 4 {
                    let len = u32::from_be_bytes(p.rx[at..at + 4].try_into().unwrap()) as usize;
                    if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
                        eprintln!(
                            "hk-switch: {}: a frame of {len} bytes; disconnected",
                            p.reg.name
                        );
                        gone = true;
                        break 'read;
                    }
                    if p.rx_len - at < 4 + len {
                        break;
                    }
                    frames.push(p.rx[at + 4..at + 4 + len].to_vec());
                    at += 4 + len;
                }
                p.rx.copy_within(at..p.rx_len, 0);
                p.rx_len -= at;
            }
        }
        let src = self.ports[i].as_ref().map(|p| p.mac);
        for frame in frames {
            if Some(<[u8; 6]>::try_from(&frame[6..12]).unwrap()) != src {
                self.stats.dropped_spoofed += 1;
                continue;
            }
            self.switch_frame(i, &frame, now);
        }
        if gone {
            self.drop_port(i, now);
        }
    }

    /// Forwards a frame that came in on port `from`.
    fn switch_frame(&mut self, from: usize, frame: &[u8], now: Instant) {
        let dst: [u8; 6] = frame[..6].try_into().unwrap();
        let group = dst[0] & 1 != 0;
        if dst == GATEWAY_MAC || group {
            let ports = &self.ports;
            let lookup = |name: &str| Switch::lookup(ports, name);
            if let Some(reply) = self.gateway.handle(frame, &lookup, now) {
                self.deliver(None, &reply);
            }
            if dst == GATEWAY_MAC {
                return;
            }
        }
        self.deliver(Some(from), frame);
    }

    /// Sends a frame to the port of its destination MAC, or to all but `from` when that is
    /// a group or unknown address.
    fn deliver(&mut self, from: Option<usize>, frame: &[u8]) {
        let dst: [u8; 6] = frame[..6].try_into().unwrap();
        let target = self
            .ports
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.mac == dst));
        for (i, port) in self.ports.iter_mut().enumerate() {
            let Some(port) = port else { continue };
            if Some(i) == from || target.is_some_and(|t| t != i) {
                continue;
            }
            if port.enqueue(frame) {
                self.stats.forwarded += 1;
            } else {
                self.stats.dropped_full += 1;
            }
        }
    }
}

fn refuse(stream: &mut UnixStream, error: String) {
    eprintln!("hk-switch: refused: {error}");
    let _ = write_control(
        stream,
        &Reply {
            ok: false,
            error: Some(error),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    const NET: Segment = Segment {
        subnet: Ipv4Addr::new(10, 89, 0, 0),
        prefix: 24,
        gateway: Ipv4Addr::new(10, 89, 0, 1),
    };

    fn mac(n: u8) -> [u8; 6] {
        [2, 0x68, 10, 89, 0, n]
    }

    fn reg(n: u8, name: &str) -> Registration {
        Registration {
            id: format!("{n:x}{}", "a".repeat(63)),
            name: name.into(),
            aliases: vec![format!("{name}-alias")],
            mac: format_mac(mac(n)),
            ipv4: Ipv4Addr::new(10, 89, 0, n),
        }
    }

    fn switch() -> Switch {
        Switch::new(NET, Gateway::new(NET.gateway, true, &[]), None)
    }

    /// Adds a port and returns the guest's end.
    fn port(sw: &mut Switch, n: u8) -> UnixStream {
        let (theirs, mine) = UnixStream::pair().unwrap();
        sw.add_port(theirs, reg(n, &format!("c{n}"))).unwrap();
        mine.set_nonblocking(true).unwrap();
        mine
    }

    fn frame(dst: [u8; 6], src: [u8; 6], tag: u8) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x88, 0xb5, tag, tag, tag]);
        f
    }

    fn send(s: &mut UnixStream, f: &[u8]) {
        let mut b = (f.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(f);
        s.write_all(&b).unwrap();
    }

    fn pump(sw: &mut Switch) {
        for _ in 0..4 {
            sw.poll_once(Duration::from_millis(5));
        }
    }

    /// Every frame waiting on a guest's end.
    fn recv_all(s: &mut UnixStream) -> Vec<Vec<u8>> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => break,
            }
        }
        let mut out = Vec::new();
        let mut at = 0;
        while at + 4 <= buf.len() {
            let len = u32::from_be_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
            out.push(buf[at + 4..at + 4 + len].to_vec());
            at += 4 + len;
        }
        out
    }

    #[test]
    fn unicast_goes_to_its_port_broadcast_and_unknown_flood() {
        let mut sw = switch();
        let mut a = port(&mut sw, 2);
        let mut b = port(&mut sw, 3);
        let mut c = port(&mut sw, 4);
        send(&mut a, &frame(mac(3), mac(2), 1));
        pump(&mut sw);
        assert_eq!(recv_all(&mut b), vec![frame(mac(3), mac(2), 1)]);
        assert!(recv_all(&mut c).is_empty());
        assert!(recv_all(&mut a).is_empty(), "never back to the sender");
        send(&mut b, &frame([0xff; 6], mac(3), 2));
        send(&mut b, &frame(mac(99), mac(3), 3));
        pump(&mut sw);
        assert_eq!(recv_all(&mut a).len(), 2);
        assert_eq!(recv_all(&mut c).len(), 2);
        assert!(recv_all(&mut b).is_empty());
    }

    #[test]
    fn spoofed_source_addresses_are_dropped() {
        let mut sw = switch();
        let mut a = port(&mut sw, 2);
        let mut b = port(&mut sw, 3);
        // a claims to be b, and some other MAC.
        send(&mut a, &frame([0xff; 6], mac(3), 1));
        send(&mut a, &frame(mac(3), mac(77), 2));
        pump(&mut sw);
        assert!(recv_all(&mut b).is_empty());
        assert_eq!(sw.stats.dropped_spoofed, 2);
        // And a duplicate MAC or address cannot register.
        let (s, _keep) = UnixStream::pair().unwrap();
        assert!(sw.add_port(s, reg(3, "again")).is_err());
        let (s, _keep) = UnixStream::pair().unwrap();
        let mut r = reg(5, "x");
        r.ipv4 = Ipv4Addr::new(10, 89, 0, 2);
        assert!(sw.add_port(s, r).is_err());
        for ip in [
            [10, 89, 0, 1],
            [10, 89, 0, 0],
            [10, 89, 0, 255],
            [10, 90, 0, 5],
        ] {
            let (s, _keep) = UnixStream::pair().unwrap();
            let mut r = reg(6, "y");
            r.ipv4 = ip.into();
            assert!(sw.add_port(s, r).is_err(), "{ip:?}");
        }
    }

    #[test]
    fn switches_are_isolated() {
        let mut one = switch();
        let mut two = switch();
        let mut a = port(&mut one, 2);
        let mut b = port(&mut one, 3);
        let mut c = port(&mut two, 4);
        send(&mut a, &frame([0xff; 6], mac(2), 1));
        send(&mut a, &frame(mac(4), mac(2), 2));
        pump(&mut one);
        pump(&mut two);
        assert_eq!(recv_all(&mut b).len(), 2);
        assert!(recv_all(&mut c).is_empty());
    }

    #[test]
    fn a_port_that_does_not_read_stays_bounded() {
        let mut sw = switch();
        let mut a = port(&mut sw, 2);
        let mut b = port(&mut sw, 3);
        // b never reads; a floods it with large frames.
        let mut big = frame(mac(3), mac(2), 9);
        big.resize(60000, 0xab);
        let mut sent = 0;
        for _ in 0..400 {
            let mut framed = (big.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(&big);
            if a.write_all(&framed).is_ok() {
                sent += 1;
            }
            sw.poll_once(Duration::ZERO);
        }
        pump(&mut sw);
        let q = sw.ports[1].as_ref().unwrap();
        assert!(q.tx_bytes <= TX_QUEUE_MAX);
        assert!(sw.stats.dropped_full > 0, "sent {sent}: {:?}", sw.stats);
        // b's peer still works once it reads: what it gets is whole frames.
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        for _ in 0..200 {
            while let Ok(n) = b.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
            }
            sw.poll_once(Duration::from_millis(1));
        }
        let framed = 4 + big.len();
        assert!(!got.is_empty() && got.len() % framed == 0, "{}", got.len());
        assert!(
            got.len() <= TX_QUEUE_MAX + (4 << 20),
            "queue plus socket buffers at most"
        );
        for f in got.chunks(framed) {
            assert_eq!(&f[4..], &big[..]);
        }
        drop(b);
        send(&mut a, &frame(mac(3), mac(2), 1));
        pump(&mut sw);
        assert_eq!(sw.port_count(), 1);
    }

    #[test]
    fn a_lying_length_disconnects_the_port() {
        let mut sw = switch();
        let mut a = port(&mut sw, 2);
        let _b = port(&mut sw, 3);
        a.write_all(&[0, 0, 0, 5, 1, 2, 3, 4, 5]).unwrap();
        pump(&mut sw);
        assert_eq!(sw.port_count(), 1);
        let mut c = port(&mut sw, 4);
        c.write_all(&0x0100_0000u32.to_be_bytes()).unwrap();
        pump(&mut sw);
        assert_eq!(sw.port_count(), 1);
        assert!(sw.idle_for(Instant::now()).is_none());
    }

    #[test]
    fn registration_over_the_listener_then_frames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switch.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut sw = Switch::new(NET, Gateway::new(NET.gateway, true, &[]), Some(listener));
        let t = std::thread::spawn(move || {
            let mut a = UnixStream::connect(&path).unwrap();
            write_control(&mut a, &reg(2, "alpha")).unwrap();
            let r: Reply = read_control(&mut a).unwrap();
            assert!(r.ok, "{r:?}");
            let mut b = UnixStream::connect(&path).unwrap();
            write_control(&mut b, &reg(2, "beta")).unwrap();
            let r: Reply = read_control(&mut b).unwrap();
            assert!(!r.ok && r.error.unwrap().contains("in use"));
            // Garbage instead of a registration: closed without a port.
            let mut c = UnixStream::connect(&path).unwrap();
            c.write_all(&[0, 0, 0, 3, b'{', b'x', b'}']).unwrap();
            let r: Reply = read_control(&mut c).unwrap();
            assert!(!r.ok);
            // The registered port's frames flow right after the reply.
            let mut d = UnixStream::connect(&path).unwrap();
            write_control(&mut d, &reg(3, "delta")).unwrap();
            let r: Reply = read_control(&mut d).unwrap();
            assert!(r.ok);
            send(&mut a, &frame(mac(3), mac(2), 7));
            d.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut hdr = [0u8; 4];
            d.read_exact(&mut hdr).unwrap();
            let mut f = vec![0u8; u32::from_be_bytes(hdr) as usize];
            d.read_exact(&mut f).unwrap();
            assert_eq!(f, frame(mac(3), mac(2), 7));
        });
        let until = Instant::now() + Duration::from_secs(10);
        while !t.is_finished() && Instant::now() < until {
            sw.poll_once(Duration::from_millis(10));
        }
        t.join().unwrap();
        // The thread's sockets closed as it ended; the switch sees that at its next polls.
        let until = Instant::now() + Duration::from_secs(5);
        while sw.port_count() > 0 && Instant::now() < until {
            sw.poll_once(Duration::from_millis(10));
        }
        assert_eq!(sw.port_count(), 0, "all gone with the thread");
    }

    #[test]
    fn the_switch_answers_dns_for_its_ports() {
        use crate::network::gateway::tests_support::*;
        let mut sw = switch();
        let mut a = port(&mut sw, 2);
        let _b = port(&mut sw, 3);
        for (name, want) in [
            ("c3", Some([10, 89, 0, 3])),
            ("C3-ALIAS", Some([10, 89, 0, 3])),
            ("3aaaaaaaaaaa", Some([10, 89, 0, 3])),
            ("nobody", None),
        ] {
            send(&mut a, &dns_query_frame(mac(2), [10, 89, 0, 2], name));
            pump(&mut sw);
            let got = recv_all(&mut a);
            assert_eq!(got.len(), 1, "{name}");
            assert_eq!(dns_answer_a(&got[0]), want.map(Ipv4Addr::from), "{name}");
        }
    }
}
