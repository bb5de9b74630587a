//! The vsock device on its real thread, driven by a test playing the guest's driver in mock
//! guest memory: connections both ways, the hybrid Unix socket, credit in both directions,
//! and a hostile guest (malformed packets, ignored credit, floods) that gets resets and
//! never grows the device's buffers.

use super::packet::*;
use super::worker::MAX_PENDING_RESETS;
use super::*;
use crate::virtio::worker::{Activated, WorkerHandle};
use crate::virtio::VirtioInterrupt;
use crate::GuestMemory;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const GUEST_CID: u64 = 3;
const QSIZE: u16 = 256;
const WRITE: u16 = 2;
/// Room of each receive buffer after the header, as a Linux 6.1 guest gives.
const RX_ROOM: u32 = 4096;
const MEM: usize = 64 << 20;
const WAIT: Duration = Duration::from_secs(10);

use crate::CountingInterrupt as Count;

/// One split virtqueue as the driver sees it.
struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    /// Buffer of slot i: `bufs + i * buf_size`.
    bufs: u64,
    buf_size: u64,
    avail_idx: u16,
    used_idx: u16,
}

impl Ring {
    fn new(base: u64, bufs: u64, buf_size: u64) -> Ring {
        Ring {
            desc: base,
            avail: base + 16 * u64::from(QSIZE),
            used: base + 0x2000,
            bufs,
            buf_size,
            avail_idx: 0,
            used_idx: 0,
        }
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }

    fn slot_buf(&self, slot: u16) -> u64 {
        self.bufs + u64::from(slot) * self.buf_size
    }

    /// Makes one single-descriptor chain available; returns its buffer address.
    fn offer(&mut self, mem: &GuestMemory, addr: Option<u64>, len: u32, flags: u16) -> u64 {
        let slot = self.avail_idx % QSIZE;
        let addr = addr.unwrap_or_else(|| self.slot_buf(slot));
        let d = RawDescriptor::from(Descriptor::new(addr, len, flags, 0));
        mem.write_obj(d, GuestAddress(self.desc + 16 * u64::from(slot)))
            .unwrap();
        mem.write_obj(slot, GuestAddress(self.avail + 4 + 2 * u64::from(slot)))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        addr
    }

    /// Used entries (id, len) since the last call.
    fn take_used(&mut self, mem: &GuestMemory) -> Vec<(u16, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_idx != idx {
            let at = self.used + 4 + 8 * u64::from(self.used_idx % QSIZE);
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id as u16, len));
            self.used_idx = self.used_idx.wrapping_add(1);
        }
        out
    }
}

/// The device running on its thread, and a driver for it.
struct Guest {
    mem: GuestMemory,
    notify: Event,
    handle: Option<WorkerHandle>,
    /// Owns the hybrid socket's path.
    device: Option<Vsock>,
    host: VsockHost,
    fatal: Arc<Mutex<Vec<String>>>,
    rx: Ring,
    tx: Ring,
    evt: Ring,
    /// Packets received and not yet looked at.
    inbox: Vec<(Header, Vec<u8>)>,
    uds: Option<PathBuf>,
}

fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "hk-vsock-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Guest {
    fn start(uds: Option<PathBuf>) -> Guest {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let rx = Ring::new(0x1_0000, 0x10_0000, 0x2000);
        let tx = Ring::new(0x2_0000, 0x100_0000, 0x1_1000);
        let evt = Ring::new(0x3_0000, 0x300_0000, 0x100);
        let mut device = Vsock::new(&VsockConfig {
            guest_cid: GUEST_CID,
            uds: uds.clone(),
        })
        .unwrap();
        let host = device.host();
        let notify = Event::new().unwrap();
        let fatal = Arc::new(Mutex::new(Vec::new()));
        let sink = fatal.clone();
        let handle = crate::virtio::worker::spawn(
            "vsock-test".into(),
            Activated {
                worker: device.activate(VIRTIO_F_VERSION_1).unwrap(),
                queues: vec![rx.queue(), tx.queue(), evt.queue()],
                mem: mem.clone(),
                interrupt: VirtioInterrupt::new(Arc::new(Count::default())),
                notify: notify.try_clone().unwrap(),
            },
            Arc::new(move |why| sink.lock().unwrap().push(why)),
            None,
        )
        .unwrap();
        Guest {
            mem,
            notify,
            handle: Some(handle),
            device: Some(device),
            host,
            fatal,
            rx,
            tx,
            evt,
            inbox: Vec::new(),
            uds,
        }
    }

    fn kick(&self) {
        self.notify.signal().unwrap();
    }

    /// Makes up to `n` more receive buffers available, as many as the ring has room for.
    fn give_rx(&mut self, n: usize) {
        self.collect();
        let outstanding = usize::from(self.rx.avail_idx.wrapping_sub(self.rx.used_idx));
        for _ in 0..n.min(usize::from(QSIZE) - outstanding) {
            self.rx
                .offer(&self.mem, None, HEADER_LEN as u32 + RX_ROOM, WRITE);
        }
        self.kick();
    }

    /// Sends one packet as the guest's driver would: header and payload in one buffer. The
    /// header's length is the payload's unless the test set another.
    fn send(&mut self, mut hdr: Header, payload: &[u8]) {
        if hdr.len == 0 {
            hdr.len = payload.len() as u32;
        }
        let slot = self.tx.avail_idx % QSIZE;
        let buf = self.tx.slot_buf(slot);
        self.mem
            .write_slice(&hdr.bytes(), GuestAddress(buf))
            .unwrap();
        self.mem
            .write_slice(payload, GuestAddress(buf + HEADER_LEN as u64))
            .unwrap();
        self.tx
            .offer(&self.mem, Some(buf), (HEADER_LEN + payload.len()) as u32, 0);
        self.kick();
        // Transmit buffers come back at once.
        self.wait_tx_used();
    }

    fn wait_tx_used(&mut self) {
        let deadline = Instant::now() + WAIT;
        while self.tx.used_idx != self.tx.avail_idx {
            let _ = self.tx.take_used(&self.mem);
            assert!(Instant::now() < deadline, "transmit buffers never used");
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// A packet from guest port `src` to host port `dst`.
    fn pkt(&self, op: u16, src: u32, dst: u32) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: src,
            dst_port: dst,
            kind: TYPE_STREAM,
            op,
            buf_alloc: 1 << 20,
            ..Header::default()
        }
    }

    /// Moves received packets into the inbox.
    fn collect(&mut self) {
        for (id, len) in self.rx.take_used(&self.mem) {
            let buf = self.rx.slot_buf(id);
            if (len as usize) < HEADER_LEN {
                continue;
            }
            let mut raw = [0u8; HEADER_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(buf)).unwrap();
            let hdr = Header::parse(&raw);
            assert_eq!(len as usize, HEADER_LEN + hdr.len as usize, "used length");
            let mut data = vec![0u8; hdr.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(buf + HEADER_LEN as u64))
                .unwrap();
            self.inbox.push((hdr, data));
        }
    }

    /// Waits for a received packet matching `want`, and takes it.
    fn expect(&mut self, what: &str, want: impl Fn(&Header) -> bool) -> (Header, Vec<u8>) {
        let deadline = Instant::now() + WAIT;
        loop {
            self.collect();
            if let Some(i) = self.inbox.iter().position(|(h, _)| want(h)) {
                return self.inbox.remove(i);
            }
            if Instant::now() > deadline {
                panic!("no {what}; got {:?}", self.inbox);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Accepts a host-initiated connection as a Linux guest listening on `port` does.
    fn accept_request(&mut self, port: u32) -> Header {
        let (req, _) = self.expect("REQUEST", |h| h.op == OP_REQUEST && h.dst_port == port);
        assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, GUEST_CID));
        let mut resp = self.pkt(OP_RESPONSE, port, req.src_port);
        resp.buf_alloc = 1 << 20;
        self.send(resp, &[]);
        req
    }

    fn stop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.stop();
        }
        self.device = None;
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop();
        assert!(
            self.fatal.lock().unwrap().is_empty(),
            "the device failed: {:?}",
            self.fatal.lock().unwrap()
        );
        if let Some(path) = &self.uds {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn read_exactly(stream: &mut UnixStream, n: usize) -> Vec<u8> {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn host_connects_exchanges_data_both_ways_and_sees_the_guest_close() {
    let mut g = Guest::start(None);
    g.give_rx(16);
    let host = g.host.clone();
    let connecting = std::thread::spawn(move || host.connect(1024, WAIT));
    let req = g.accept_request(1024);
    let mut stream = connecting.join().unwrap().unwrap();
    stream.write_all(b"hello guest").unwrap();
    let (rw, data) = g.expect("RW", |h| h.op == OP_RW);
    assert_eq!(data, b"hello guest");
    assert_eq!(rw.src_port, req.src_port);
    g.send(g.pkt(OP_RW, 1024, req.src_port), b"hello host");
    assert_eq!(read_exactly(&mut stream, 10), b"hello host");
    // The guest closes: the host reads end-of-file, the device ends it with a reset.
    let mut shut = g.pkt(OP_SHUTDOWN, 1024, req.src_port);
    shut.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send(shut, &[]);
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    g.expect("RST after the close", |h| h.op == OP_RST);
}

#[test]
fn guest_connections_reach_listeners_and_unknown_ports_are_reset() {
    let mut g = Guest::start(None);
    g.give_rx(16);
    let listener = g.host.listen(1024).unwrap();
    assert!(g.host.listen(1024).is_err(), "one listener per port");
    g.send(g.pkt(OP_REQUEST, 5555, 1024), &[]);
    let mut stream = listener.accept(WAIT).unwrap();
    g.expect("RESPONSE", |h| h.op == OP_RESPONSE && h.dst_port == 5555);
    g.send(g.pkt(OP_RW, 5555, 1024), b"ready");
    assert_eq!(read_exactly(&mut stream, 5), b"ready");
    // The host half-closes; the guest hears SHUTDOWN(SEND) and can still send.
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let (shut, _) = g.expect("SHUTDOWN", |h| h.op == OP_SHUTDOWN);
    assert_eq!(shut.flags, SHUTDOWN_SEND);
    g.send(g.pkt(OP_RW, 5555, 1024), b"after");
    assert_eq!(read_exactly(&mut stream, 5), b"after");

    g.send(g.pkt(OP_REQUEST, 5556, 4000), &[]);
    g.expect("RST for a port nobody listens on", |h| {
        h.op == OP_RST && h.dst_port == 5556 && h.src_port == 4000
    });
    drop(listener);
    g.send(g.pkt(OP_REQUEST, 5557, 1024), &[]);
    g.expect("RST once the listener is gone", |h| {
        h.op == OP_RST && h.dst_port == 5557
    });
}

#[test]
fn a_guest_that_refuses_or_never_answers_fails_the_host_connect() {
    let mut g = Guest::start(None);
    g.give_rx(16);
    let host = g.host.clone();
    let connecting = std::thread::spawn(move || host.connect(7, WAIT));
    let (req, _) = g.expect("REQUEST", |h| h.op == OP_REQUEST);
    g.send(g.pkt(OP_RST, 7, req.src_port), &[]);
    let err = connecting.join().unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);

    let started = Instant::now();
    let err = g.host.connect(8, Duration::from_millis(300)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(started.elapsed() < WAIT);
}

#[test]
fn the_hybrid_socket_speaks_firecrackers_convention_both_ways() {
    let dir = scratch("uds");
    let path = dir.join("vm.vsock");
    let mut g = Guest::start(Some(path.clone()));
    g.give_rx(16);
    let mut client = UnixStream::connect(&path).unwrap();
    client.write_all(b"CONNECT 52\n").unwrap();
    let req = g.accept_request(52);
    let mut line = Vec::new();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        client.read_exact(&mut byte).unwrap();
        line.push(byte[0]);
    }
    assert_eq!(line, format!("OK {}\n", req.src_port).as_bytes());
    client.write_all(b"ping").unwrap();
    let (_, data) = g.expect("RW from the client", |h| h.op == OP_RW);
    assert_eq!(data, b"ping");

    // A bad line is refused by closing.
    let mut bad = UnixStream::connect(&path).unwrap();
    bad.write_all(b"HELLO 52\n").unwrap();
    bad.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(bad.read(&mut byte).unwrap(), 0);

    // A guest connection to host port 99 goes to <uds>_99.
    let mut side = path.clone().into_os_string();
    side.push("_99");
    let listener = std::os::unix::net::UnixListener::bind(&side).unwrap();
    g.send(g.pkt(OP_REQUEST, 6000, 99), &[]);
    let (mut accepted, _) = listener.accept().unwrap();
    g.expect("RESPONSE", |h| h.op == OP_RESPONSE && h.dst_port == 6000);
    g.send(g.pkt(OP_RW, 6000, 99), b"to uds");
    assert_eq!(read_exactly(&mut accepted, 6), b"to uds");
    g.stop();
    assert!(!path.exists(), "the socket is removed with the device");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_device_never_sends_past_the_guests_credit() {
    let mut g = Guest::start(None);
    g.give_rx(64);
    let listener = g.host.listen(1024).unwrap();
    let mut req = g.pkt(OP_REQUEST, 7000, 1024);
    req.buf_alloc = 8192;
    g.send(req, &[]);
    let mut stream = listener.accept(WAIT).unwrap();
    g.expect("RESPONSE", |h| h.op == OP_RESPONSE);
    let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let writer = {
        let big = big.clone();
        std::thread::spawn(move || {
            stream.write_all(&big).unwrap();
            stream
        })
    };
    let mut got = Vec::new();
    let mut fwd = 0u32;
    while got.len() < big.len() {
        // Take what arrives until the device stops for lack of credit.
        std::thread::sleep(Duration::from_millis(20));
        g.collect();
        for (h, data) in g.inbox.drain(..) {
            if h.op == OP_RW {
                got.extend_from_slice(&data);
            }
        }
        assert!(
            got.len() as u32 <= fwd + 8192,
            "{} bytes sent with only {} of credit",
            got.len(),
            fwd + 8192
        );
        // The guest's application read everything: tell the device.
        fwd = got.len() as u32;
        let mut update = g.pkt(OP_CREDIT_UPDATE, 7000, 1024);
        update.buf_alloc = 8192;
        update.fwd_cnt = fwd;
        g.send(update, &[]);
        g.give_rx(4);
    }
    assert_eq!(got, big);
    drop(writer.join().unwrap());
}

#[test]
fn a_slow_host_reader_holds_the_guest_back_and_credit_returns_when_it_reads() {
    let mut g = Guest::start(None);
    g.give_rx(64);
    let listener = g.host.listen(1024).unwrap();
    g.send(g.pkt(OP_REQUEST, 7100, 1024), &[]);
    let mut stream = listener.accept(WAIT).unwrap();
    let (resp, _) = g.expect("RESPONSE", |h| h.op == OP_RESPONSE);
    assert_eq!(resp.buf_alloc, BUF_ALLOC);
    // The guest sends exactly its credit and more, as Linux does, within what the host
    // socket and the device's buffer take: nothing is lost, nothing reset.
    let chunk = vec![7u8; 4096];
    let mut sent = 0u32;
    let mut told = 0u32;
    // Until the advertised window is spent: the device forwards what the socket takes
    // and owes credit only for that.
    loop {
        let credit = BUF_ALLOC - (sent - told);
        if credit == 0 {
            break;
        }
        let n = credit.min(4096) as usize;
        g.send(g.pkt(OP_RW, 7100, 1024), &chunk[..n]);
        sent += n as u32;
        g.collect();
        for (h, _) in g.inbox.drain(..) {
            told = told.max(h.fwd_cnt);
        }
        if sent > 64 << 20 {
            panic!("the device never stopped granting credit to an unread socket");
        }
    }
    assert!(g.inbox.iter().all(|(h, _)| h.op != OP_RST));
    // The host reads everything; credit flows back.
    let total = sent as usize;
    let reader = std::thread::spawn(move || (read_exactly(&mut stream, total), stream));
    // Enough credit comes back for the guest to go on at full speed: within a quarter of
    // the window of everything it sent.
    g.expect("credit for nearly all", |h| {
        h.op == OP_CREDIT_UPDATE && h.fwd_cnt >= sent - BUF_ALLOC / 4
    });
    assert_eq!(reader.join().unwrap().0.len(), total);
}

#[test]
fn a_guest_ignoring_credit_is_reset_instead_of_buffered() {
    let mut g = Guest::start(None);
    g.give_rx(64);
    let listener = g.host.listen(1024).unwrap();
    g.send(g.pkt(OP_REQUEST, 7200, 1024), &[]);
    let mut stream = listener.accept(WAIT).unwrap();
    g.expect("RESPONSE", |h| h.op == OP_RESPONSE);
    // Never read by the host; the guest keeps sending regardless of credit. The window
    // plus any host socket buffer is far below this limit.
    let chunk = vec![1u8; 64 << 10];
    let limit = 8u64 << 20;
    let mut sent = 0u64;
    loop {
        g.send(g.pkt(OP_RW, 7200, 1024), &chunk);
        sent += chunk.len() as u64;
        g.collect();
        if g.inbox.iter().any(|(h, _)| h.op == OP_RST) {
            break;
        }
        assert!(sent < limit, "no reset after {sent} bytes past credit");
    }
    // The connection is gone on the host side too: what was forwarded, then end-of-file.
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!((rest.len() as u64) < sent);
}

#[test]
fn malformed_packets_get_resets_or_are_dropped_never_a_panic() {
    let mut g = Guest::start(None);
    g.give_rx(128);
    // Too short for a header: used and dropped.
    g.tx.offer(&g.mem, None, 20, 0);
    // Outside guest memory.
    g.tx.offer(&g.mem, Some(MEM as u64 - 8), 64, 0);
    g.tx.offer(&g.mem, Some(u64::MAX - 8), 64, 0);
    // A device-writable transmit buffer has no readable header.
    g.tx.offer(&g.mem, None, 64, WRITE);
    g.kick();
    g.wait_tx_used();
    // A payload longer than the buffer, or than any packet may be.
    let mut h = g.pkt(OP_RW, 1, 2);
    h.len = 100;
    let slot = g.tx.avail_idx % QSIZE;
    let buf = g.tx.slot_buf(slot);
    g.mem.write_slice(&h.bytes(), GuestAddress(buf)).unwrap();
    g.tx.offer(&g.mem, Some(buf), HEADER_LEN as u32 + 10, 0);
    g.kick();
    g.wait_tx_used();
    g.expect("RST for a cut payload", |h| {
        h.op == OP_RST && h.dst_port == 1
    });
    let mut h = g.pkt(OP_RW, 3, 4);
    h.len = u32::MAX;
    g.send(h, &[]);
    g.expect("RST for a huge length", |h| {
        h.op == OP_RST && h.dst_port == 3
    });
    // Wrong addresses and types.
    let mut h = g.pkt(OP_REQUEST, 10, 1024);
    h.dst_cid = 77;
    g.send(h, &[]);
    g.expect("RST for another CID", |h| {
        h.op == OP_RST && h.dst_port == 10
    });
    let mut h = g.pkt(OP_REQUEST, 11, 1024);
    h.kind = 2;
    g.send(h, &[]);
    g.expect("RST for seqpacket", |h| h.op == OP_RST && h.dst_port == 11);
    g.send(g.pkt(99, 12, 1024), &[]);
    g.expect("RST for an unknown op", |h| {
        h.op == OP_RST && h.dst_port == 12
    });
    // A spoofed source gets nothing; a reset is never answered with a reset.
    let mut h = g.pkt(OP_REQUEST, 13, 1024);
    h.src_cid = 9;
    g.send(h, &[]);
    g.send(g.pkt(OP_RST, 14, 1024), &[]);
    std::thread::sleep(Duration::from_millis(50));
    g.collect();
    assert!(
        g.inbox
            .iter()
            .all(|(h, _)| h.dst_port != 13 && h.dst_port != 14),
        "{:?}",
        g.inbox
    );
}

#[test]
fn receive_buffers_too_small_for_a_header_come_back_empty() {
    let mut g = Guest::start(None);
    g.rx.offer(&g.mem, None, 8, WRITE);
    g.send(g.pkt(OP_REQUEST, 15, 4321), &[]);
    let deadline = Instant::now() + WAIT;
    let used = loop {
        let used = g.rx.take_used(&g.mem);
        if !used.is_empty() {
            break used;
        }
        assert!(
            Instant::now() < deadline,
            "the small buffer was never returned"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(used, [(0, 0)]);
    g.give_rx(1);
    g.expect("RST in a usable buffer", |h| {
        h.op == OP_RST && h.dst_port == 15
    });
}

#[test]
fn a_flood_to_unknown_ports_queues_a_bounded_number_of_resets() {
    let mut g = Guest::start(None);
    // No receive buffers: every reset has to wait.
    for i in 0..(MAX_PENDING_RESETS as u32 + 500) {
        g.send(g.pkt(OP_RW, 20_000 + i, 1), b"x");
    }
    let mut resets = 0;
    loop {
        g.give_rx(200);
        std::thread::sleep(Duration::from_millis(50));
        g.collect();
        let n = g.inbox.drain(..).filter(|(h, _)| h.op == OP_RST).count();
        if n == 0 {
            break;
        }
        resets += n;
    }
    assert_eq!(resets, MAX_PENDING_RESETS);
}

#[test]
fn many_connections_at_once_each_keep_their_own_data() {
    let mut g = Guest::start(None);
    g.give_rx(200);
    let listener = g.host.listen(1024).unwrap();
    let n = 40u32;
    for i in 0..n {
        g.send(g.pkt(OP_REQUEST, 9000 + i, 1024), &[]);
    }
    let mut streams: Vec<UnixStream> = (0..n).map(|_| listener.accept(WAIT).unwrap()).collect();
    for i in 0..n {
        g.send(
            g.pkt(OP_RW, 9000 + i, 1024),
            format!("conn {i:03}").as_bytes(),
        );
    }
    let mut seen: Vec<String> = streams
        .iter_mut()
        .map(|s| String::from_utf8(read_exactly(s, 8)).unwrap())
        .collect();
    seen.sort();
    let want: Vec<String> = (0..n).map(|i| format!("conn {i:03}")).collect();
    assert_eq!(seen, want);
    for s in &mut streams {
        s.write_all(b"back").unwrap();
    }
    g.give_rx(100);
    let mut ports = std::collections::BTreeSet::new();
    while ports.len() < n as usize {
        let (h, data) = g.expect("RW back", |h| h.op == OP_RW);
        assert_eq!(data, b"back");
        ports.insert(h.dst_port);
    }
}

#[test]
fn a_transport_reset_drops_every_connection_and_tells_the_guest() {
    let mut g = Guest::start(None);
    g.give_rx(16);
    g.evt.offer(&g.mem, None, 8, WRITE);
    let listener = g.host.listen(1024).unwrap();
    g.send(g.pkt(OP_REQUEST, 4444, 1024), &[]);
    let mut stream = listener.accept(WAIT).unwrap();
    g.host.reset_all().unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(stream.read(&mut buf).unwrap(), 0);
    let deadline = Instant::now() + WAIT;
    let used = loop {
        let used = g.evt.take_used(&g.mem);
        if !used.is_empty() {
            break used;
        }
        assert!(Instant::now() < deadline, "no transport reset event");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(used[0].1, 4);
    let event: u32 = g.mem.read_obj(GuestAddress(g.evt.slot_buf(0))).unwrap();
    assert_eq!(event, 0);
}

#[test]
fn stopping_the_device_closes_the_host_ends() {
    let mut g = Guest::start(None);
    g.give_rx(16);
    let listener = g.host.listen(1024).unwrap();
    g.send(g.pkt(OP_REQUEST, 4445, 1024), &[]);
    let mut stream = listener.accept(WAIT).unwrap();
    g.stop();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(stream.read(&mut buf).unwrap(), 0);
}
