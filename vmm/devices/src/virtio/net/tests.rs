//! The NIC on its real thread, driven by a test playing the guest's driver in mock guest
//! memory, with one end of a socketpair as the backend and the test as passt on the other:
//! framing both ways, headers and mergeable buffers, frames too large for the guest,
//! back-pressure both ways, hostile descriptor chains, and a backend that closes or lies;
//! interrupts and kicks only as the driver and the device ask for them (EVENT_IDX or the
//! rings' flags), with a driver that kicks only when asked never stalling.

use super::*;
use crate::event::Event;
use crate::virtio::worker::{Activated, WorkerHandle};
use crate::virtio::{VirtioInterrupt, INT_CONFIG};
use crate::GuestMemory;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const QSIZE: u16 = 256;
const NEXT: u16 = 1;
const WRITE: u16 = 2;
const MEM: usize = 64 << 20;
const MAC: [u8; 6] = [0x02, 0x68, 0x6b, 0, 0, 1];
const WAIT: Duration = Duration::from_secs(10);

use crate::CountingInterrupt as Count;

/// One split virtqueue as the driver sees it; chains take consecutive descriptor slots.
struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    used_idx: u16,
    next_desc: u16,
}

impl Ring {
    fn new(base: u64) -> Ring {
        Ring {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            avail_idx: 0,
            used_idx: 0,
            next_desc: 0,
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

    /// Makes a chain available: (addr, len, flags, next as an offset from the chain's first
    /// slot). Returns the head index.
    fn offer_raw(&mut self, mem: &GuestMemory, descs: &[(u64, u32, u16, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let slot = (head + i as u16) % QSIZE;
            // An offset of QSIZE or more is taken as an index, past the table.
            let next = if next >= QSIZE {
                next
            } else {
                (head + next) % QSIZE
            };
            let d = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
            mem.write_obj(d, GuestAddress(self.desc + 16 * u64::from(slot)))
                .unwrap();
        }
        self.next_desc = (head + descs.len() as u16) % QSIZE;
        let at = self.avail + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        mem.write_obj(head, GuestAddress(at)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        head
    }

    /// A chain of (addr, len) buffers with `flags` each, linked in order.
    fn offer(&mut self, mem: &GuestMemory, bufs: &[(u64, u32)], flags: u16) -> u16 {
        let descs: Vec<_> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len))| {
                let more = i + 1 < bufs.len();
                (addr, len, flags | if more { NEXT } else { 0 }, i as u16 + 1)
            })
            .collect();
        self.offer_raw(mem, &descs)
    }

    /// The driver's `used_event` (EVENT_IDX): interrupt once the used index passes it.
    fn set_used_event(&self, mem: &GuestMemory, event: u16) {
        let at = self.avail + 4 + 2 * u64::from(QSIZE);
        mem.write_obj(event, GuestAddress(at)).unwrap();
    }

    /// The avail ring's flags (without EVENT_IDX: 1 declines interrupts).
    fn set_avail_flags(&self, mem: &GuestMemory, flags: u16) {
        mem.write_obj(flags, GuestAddress(self.avail)).unwrap();
    }

    /// The used ring's flags (without EVENT_IDX: 1 declines kicks).
    fn used_flags(&self, mem: &GuestMemory) -> u16 {
        mem.read_obj(GuestAddress(self.used)).unwrap()
    }

    /// Whether the device asks for a kick after the driver moved its avail index from
    /// `old` to where it is now, as Linux's `virtqueue_kick_prepare` decides.
    fn kick_wanted(&self, mem: &GuestMemory, event_idx: bool, old: u16) -> bool {
        // The index is published before the device's wish is read (Linux's virtio_mb).
        std::sync::atomic::fence(Ordering::SeqCst);
        if event_idx {
            let at = self.used + 4 + 8 * u64::from(QSIZE);
            let event: u16 = mem.read_obj(GuestAddress(at)).unwrap();
            self.avail_idx.wrapping_sub(event).wrapping_sub(1) < self.avail_idx.wrapping_sub(old)
        } else {
            self.used_flags(mem) & 1 == 0
        }
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

/// The NIC on its thread, a driver for it, and passt's end of the socket.
struct Guest {
    mem: GuestMemory,
    notify: Event,
    handle: Option<WorkerHandle>,
    net: Net,
    stats: Arc<Stats>,
    interrupt: VirtioInterrupt,
    /// Interrupts raised so far.
    interrupts: Arc<Count>,
    errors: Arc<Mutex<Vec<String>>>,
    fatal: Arc<Mutex<Vec<String>>>,
    passt: UnixStream,
    rx: Ring,
    tx: Ring,
    /// Where the next rx / tx buffer goes.
    rx_at: u64,
    tx_at: u64,
}

impl Guest {
    fn start(mrg: bool) -> Guest {
        let mut without = 0;
        if !mrg {
            without |= VIRTIO_NET_F_MRG_RXBUF;
        }
        Guest::start_without(without)
    }

    /// A NIC whose driver accepts every offered feature but `without`.
    fn start_without(without: u64) -> Guest {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let (mine, passt) = UnixStream::pair().unwrap();
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        let mut net = Net::new(
            "net0",
            Box::new(StreamBackend::new(mine).unwrap()),
            MAC,
            MAX_MTU,
            Some(Arc::new(move |why| sink.lock().unwrap().push(why))),
        )
        .unwrap();
        let rx = Ring::new(0x1_0000);
        let tx = Ring::new(0x2_0000);
        let notify = Event::new().unwrap();
        let interrupts = Arc::new(Count::default());
        let interrupt = VirtioInterrupt::new(interrupts.clone());
        let fatal = Arc::new(Mutex::new(Vec::new()));
        let sink = fatal.clone();
        let features = net.features() & !without;
        let handle = crate::virtio::worker::spawn(
            "net-test".into(),
            Activated {
                worker: net.activate(features).unwrap(),
                queues: vec![rx.queue(), tx.queue()],
                mem: mem.clone(),
                interrupt: interrupt.clone(),
                notify: notify.try_clone().unwrap(),
            },
            Arc::new(move |why| sink.lock().unwrap().push(why)),
            None,
        )
        .unwrap();
        passt.set_read_timeout(Some(WAIT)).unwrap();
        Guest {
            mem,
            notify,
            handle: Some(handle),
            stats: net.stats(),
            net,
            interrupt,
            interrupts,
            errors,
            fatal,
            passt,
            rx,
            tx,
            rx_at: 0x10_0000,
            tx_at: 0x100_0000,
        }
    }

    fn kick(&self) {
        self.notify.signal().unwrap();
    }

    fn interrupts(&self) -> usize {
        self.interrupts.0.load(Ordering::SeqCst)
    }

    /// A fresh guest buffer of `len` bytes for receiving.
    fn rx_buf(&mut self, len: u32) -> u64 {
        // Addresses come round again well after their buffers were used.
        if self.rx_at + u64::from(len) > 0xf0_0000 {
            self.rx_at = 0x10_0000;
        }
        let at = self.rx_at;
        self.rx_at += u64::from(len).next_multiple_of(64);
        at
    }

    /// Posts `n` receive buffers of `len` bytes each; returns their addresses by head.
    fn give_rx(&mut self, n: usize, len: u32) -> Vec<(u16, u64)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let addr = self.rx_buf(len);
            let head = self.rx.offer(&self.mem, &[(addr, len)], WRITE);
            out.push((head, addr));
        }
        self.kick();
        out
    }

    /// Sends `frame` as the driver does: a header, then the frame, in `split` descriptors
    /// (1: header and frame in one buffer; 2: header in the first).
    fn send(&mut self, frame: &[u8], split: usize) -> u16 {
        let head = self.offer_tx(frame, split);
        self.kick();
        head
    }

    /// Makes `frame` available for transmission as [`Guest::send`] does, without a kick.
    fn offer_tx(&mut self, frame: &[u8], split: usize) -> u16 {
        let at = self.tx_at;
        self.tx_at += (HDR_LEN + frame.len()) as u64 + 64;
        let mut bytes = vec![0u8; HDR_LEN];
        bytes.extend_from_slice(frame);
        self.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        if split == 1 {
            self.tx.offer(&self.mem, &[(at, bytes.len() as u32)], 0)
        } else {
            self.tx.offer(
                &self.mem,
                &[
                    (at, HDR_LEN as u32),
                    (at + HDR_LEN as u64, frame.len() as u32),
                ],
                0,
            )
        }
    }

    /// Passt's side: one frame from the device, prefix checked.
    fn passt_read(&mut self) -> Vec<u8> {
        let mut len = [0u8; 4];
        self.passt.read_exact(&mut len).unwrap();
        let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
        self.passt.read_exact(&mut frame).unwrap();
        frame
    }

    fn passt_write(&mut self, frame: &[u8]) {
        let mut bytes = (frame.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(frame);
        self.passt.write_all(&bytes).unwrap();
    }

    /// Waits until the ring has `n` more used entries; returns them.
    fn used(ring: &mut Ring, mem: &GuestMemory, n: usize) -> Vec<(u16, u32)> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        while got.len() < n {
            got.extend(ring.take_used(mem));
            assert!(
                Instant::now() < deadline,
                "{} of {n} used entries",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(got.len(), n, "more used entries than expected: {got:?}");
        got
    }

    fn rx_used(&mut self, n: usize) -> Vec<(u16, u32)> {
        Self::used(&mut self.rx, &self.mem, n)
    }

    fn tx_used(&mut self, n: usize) -> Vec<(u16, u32)> {
        Self::used(&mut self.tx, &self.mem, n)
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn link(&self) -> u16 {
        let mut b = [0u8; 2];
        self.net.read_config(6, &mut b);
        u16::from_le_bytes(b)
    }

    fn stop(mut self) -> Vec<String> {
        self.handle.take().unwrap().stop();
        let fatal = self.fatal.lock().unwrap().clone();
        assert!(fatal.is_empty(), "the device failed: {fatal:?}");
        self.errors.lock().unwrap().clone()
    }
}

/// A frame of `len` bytes whose content says where each byte was.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn configuration_space_has_mac_link_and_mtu() {
    let (a, _b) = UnixStream::pair().unwrap();
    let net = Net::new(
        "net0",
        Box::new(StreamBackend::new(a).unwrap()),
        MAC,
        1500,
        None,
    )
    .unwrap();
    let mut c = [0u8; 12];
    net.read_config(0, &mut c);
    assert_eq!(&c[..6], &MAC);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), VIRTIO_NET_S_LINK_UP);
    assert_eq!(u16::from_le_bytes([c[10], c[11]]), 1500);
    let f = net.features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
    ] {
        assert_ne!(f & bit, 0, "{bit:#x}");
    }
    // No checksum or segmentation offload (bits 0, 1, 7..=14).
    assert_eq!(f & (0b11 | 0xff << 7), 0);
    for (mac, mtu) in [
        ([1, 0, 0, 0, 0, 1], 1500),
        ([0; 6], 1500),
        (MAC, 67),
        (MAC, 65521),
    ] {
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(Net::new(
            "n",
            Box::new(StreamBackend::new(a).unwrap()),
            mac,
            mtu,
            None
        )
        .is_err());
    }
}

#[test]
fn transmitted_frames_reach_the_backend_framed() {
    let mut g = Guest::start(true);
    let frames = [frame(60, 1), frame(1514, 2), frame(MAX_FRAME, 3)];
    for (i, f) in frames.iter().enumerate() {
        g.send(f, 1 + i % 2);
    }
    for f in &frames {
        assert_eq!(&g.passt_read(), f);
    }
    g.tx_used(3);
    assert_eq!(g.stats.tx_frames.load(Ordering::SeqCst), 3);
    assert!(g.stop().is_empty());
}

#[test]
fn a_received_frame_lands_after_a_header_with_one_buffer() {
    let mut g = Guest::start(false);
    let bufs = g.give_rx(2, 2048);
    let f = frame(1000, 9);
    g.passt_write(&f);
    let used = g.rx_used(1);
    assert_eq!(used, vec![(bufs[0].0, (HDR_LEN + f.len()) as u32)]);
    let got = g.read(bufs[0].1, HDR_LEN + f.len());
    let mut header = [0u8; HDR_LEN];
    header[NUM_BUFFERS_AT] = 1;
    assert_eq!(&got[..HDR_LEN], &header);
    assert_eq!(&got[HDR_LEN..], &f[..]);
    assert!(g.stop().is_empty());
}

#[test]
fn mergeable_buffers_take_a_frame_across_several_small_buffers() {
    let mut g = Guest::start(true);
    let bufs = g.give_rx(8, 256);
    let f = frame(1000, 5);
    g.passt_write(&f);
    // 12 + 1000 bytes: 256, 256, 256, 244.
    let used = g.rx_used(4);
    let lens: Vec<u32> = used.iter().map(|u| u.1).collect();
    assert_eq!(lens, vec![256, 256, 256, 244]);
    let mut got = Vec::new();
    for (i, &(head, len)) in used.iter().enumerate() {
        assert_eq!(head, bufs[i].0);
        got.extend(g.read(bufs[i].1, len as usize));
    }
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 4, "num_buffers");
    assert_eq!(&got[..10], &[0; 10]);
    assert_eq!(&got[HDR_LEN..], &f[..]);
    // The next frame starts in the next buffer, and a 4-byte descriptor split does not
    // matter: a chain of two descriptors holds the header across both.
    let a = g.rx_buf(8);
    let b = g.rx_buf(300);
    let head = g.rx.offer(&g.mem, &[(a, 8), (b, 300)], WRITE);
    let small = frame(100, 7);
    g.passt_write(&small);
    let used = g.rx_used(1);
    assert_eq!(used, vec![(bufs[4].0, 112)]);
    // Fill the remaining three and the two-descriptor chain: 3 * 256 + 308 = 1076.
    let big = frame(1076 - HDR_LEN, 8);
    g.passt_write(&big);
    let used = g.rx_used(4);
    assert_eq!(used.last().unwrap(), &(head, 308));
    let mut got = Vec::new();
    for (i, &(_, len)) in used[..3].iter().enumerate() {
        got.extend(g.read(bufs[5 + i].1, len as usize));
    }
    got.extend(g.read(a, 8));
    got.extend(g.read(b, 300));
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 4);
    assert_eq!(&got[HDR_LEN..], &big[..]);
    assert!(g.stop().is_empty());
}

#[test]
fn a_frame_larger_than_the_guests_buffers_is_dropped() {
    // Without mergeable buffers: the one buffer is too small; it serves the next frame.
    let mut g = Guest::start(false);
    let bufs = g.give_rx(1, 512);
    g.passt_write(&frame(1000, 1));
    let small = frame(400, 2);
    g.passt_write(&small);
    let used = g.rx_used(1);
    assert_eq!(used, vec![(bufs[0].0, 412)]);
    assert_eq!(g.read(bufs[0].1 + HDR_LEN as u64, 400), small);
    assert_eq!(g.stats.rx_dropped.load(Ordering::SeqCst), 1);
    assert!(g.stop().is_empty());

    // With them: the whole ring (256 buffers of 64 bytes) cannot hold 60000 bytes.
    let mut g = Guest::start(true);
    let bufs = g.give_rx(256, 64);
    g.passt_write(&frame(60000, 3));
    let small = frame(40, 4);
    g.passt_write(&small);
    let used = g.rx_used(1);
    assert_eq!(used, vec![(bufs[0].0, 52)]);
    assert_eq!(g.read(bufs[0].1 + HDR_LEN as u64, 40), small);
    assert_eq!(g.stats.rx_dropped.load(Ordering::SeqCst), 1);
    assert!(g.stop().is_empty());
}

/// A driver polling the used ring while the device works (as Linux's NAPI does) must never
/// see a frame's first buffers without the rest: Linux drops such a frame ("rx error: N
/// buffers out of M missing") and then takes the missing buffers for frames of their own.
/// virtio 1.2 §5.1.6.4: the buffers of one packet are used together.
#[test]
fn a_frame_across_mergeable_buffers_is_published_all_at_once() {
    const BUF: u32 = 128;
    const FRAME: usize = 4000;
    const FRAMES: usize = 7;
    let per_frame = (HDR_LEN + FRAME).div_ceil(BUF as usize);
    let mut g = Guest::start(true);
    for round in 0..20 {
        let bufs = g.give_rx(FRAMES * per_frame, BUF);
        let start = g.rx.used_idx;
        let bytes: Vec<u8> = (0..FRAMES)
            .flat_map(|i| {
                let f = frame(FRAME, (round * FRAMES + i) as u8);
                let mut b = (f.len() as u32).to_be_bytes().to_vec();
                b.extend_from_slice(&f);
                b
            })
            .collect();
        g.passt.write_all(&bytes).unwrap();
        // Every used index the driver sees while the frames land.
        let end = start.wrapping_add((FRAMES * per_frame) as u16);
        let mut seen = Vec::new();
        let deadline = Instant::now() + WAIT;
        loop {
            let idx: u16 = g.mem.read_obj(GuestAddress(g.rx.used + 2)).unwrap();
            if seen.last() != Some(&idx) {
                seen.push(idx);
            }
            if idx == end {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: used {seen:?}");
            std::hint::spin_loop();
        }
        let used = g.rx.take_used(&g.mem);
        assert_eq!(used.len(), FRAMES * per_frame);
        let mut boundaries = vec![start];
        let mut at = 0;
        while at < used.len() {
            let hdr = g.read(bufs[at].1, HDR_LEN);
            let n = usize::from(u16::from_le_bytes([hdr[10], hdr[11]]));
            assert_eq!(n, per_frame, "num_buffers");
            at += n;
            boundaries.push(start.wrapping_add(at as u16));
        }
        for idx in &seen {
            assert!(
                boundaries.contains(idx),
                "round {round}: the driver saw used index {idx}, inside a frame \
                 (frames end at {boundaries:?})"
            );
        }
    }
    assert!(g.stop().is_empty());
}

#[test]
fn a_frame_waits_for_enough_mergeable_buffers() {
    let mut g = Guest::start(true);
    g.give_rx(2, 1024);
    let f = frame(5000, 6);
    g.passt_write(&f);
    std::thread::sleep(Duration::from_millis(50));
    assert!(g.rx.take_used(&g.mem).is_empty(), "2 KiB cannot take 5 KiB");
    g.give_rx(3, 1024);
    let used = g.rx_used(5);
    assert_eq!(used.iter().map(|u| u.1).sum::<u32>(), 5012);
    assert_eq!(g.stats.rx_dropped.load(Ordering::SeqCst), 0);
    assert!(g.stop().is_empty());
}

#[test]
fn a_guest_without_receive_buffers_pushes_back_on_the_backend() {
    let mut g = Guest::start(true);
    g.passt.set_nonblocking(true).unwrap();
    let f = frame(MAX_FRAME, 1);
    let mut framed = (f.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&f);
    // Write until the socket is full: the device holds at most its receive buffer.
    let mut written = 0usize;
    let deadline = Instant::now() + WAIT;
    loop {
        match g.passt.write(&framed[written % framed.len()..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // The device may still be reading; full means full twice in a row.
                std::thread::sleep(Duration::from_millis(50));
                match g.passt.write(&framed[written % framed.len()..]) {
                    Ok(n) => written += n,
                    Err(e) => {
                        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                        break;
                    }
                }
            }
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "the socket never filled");
        assert!(
            written < 64 << 20,
            "the device read {written} bytes without buffers"
        );
    }
    assert!(
        written < 8 << 20,
        "{written} bytes taken with no buffer posted"
    );
    assert_eq!(g.stats.rx_frames.load(Ordering::SeqCst), 0);
    // Buffers come: every whole frame written arrives, in order, none dropped.
    g.passt.set_nonblocking(false).unwrap();
    let whole = (written / framed.len()) as u64;
    let deadline = Instant::now() + WAIT;
    while g.stats.rx_frames.load(Ordering::SeqCst) < whole {
        assert!(Instant::now() < deadline, "frames stopped arriving");
        g.rx.take_used(&g.mem);
        // Keep the ring full, never past its size.
        let outstanding = g.rx.avail_idx.wrapping_sub(g.rx.used_idx);
        g.give_rx(usize::from(QSIZE - outstanding), 4096);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(g.stats.rx_dropped.load(Ordering::SeqCst), 0);
    assert!(g.stop().is_empty());
}

#[test]
fn a_backend_that_does_not_read_stops_the_transmit_queue() {
    let mut g = Guest::start(true);
    let f = frame(60000, 1);
    for _ in 0..200 {
        g.send(&f, 1);
    }
    // The socket and the device's send buffer fill; most chains stay with the device.
    std::thread::sleep(Duration::from_millis(200));
    let taken = g.tx.take_used(&g.mem).len();
    assert!(
        taken < 50,
        "{taken} of 200 frames taken by a backend that reads nothing"
    );
    // Reading drains everything, in order.
    for _ in 0..200 {
        assert_eq!(g.passt_read(), f);
    }
    g.tx_used(200 - taken);
    assert!(g.stop().is_empty());
}

#[test]
fn hostile_transmit_chains_are_dropped_and_the_queue_goes_on() {
    let mut g = Guest::start(true);
    let outside = MEM as u64 - 100;
    // Outside guest memory.
    g.tx.offer(&g.mem, &[(outside, 4096)], 0);
    // A loop of two descriptors.
    g.tx.offer_raw(
        &g.mem,
        &[(0x50_0000, 100, NEXT, 1), (0x50_1000, 100, NEXT, 0)],
    );
    // Zero-length.
    g.tx.offer(&g.mem, &[(0x50_2000, 0)], 0);
    // Write-only, where the device reads.
    g.tx.offer(&g.mem, &[(0x50_3000, 200)], WRITE);
    // A header with no frame, a runt, and a frame past the maximum.
    g.tx.offer(&g.mem, &[(0x50_4000, HDR_LEN as u32)], 0);
    g.tx.offer(&g.mem, &[(0x50_5000, HDR_LEN as u32 + 5)], 0);
    g.tx.offer(&g.mem, &[(0x60_0000, (HDR_LEN + MAX_FRAME + 1) as u32)], 0);
    // A next index past the table.
    g.tx.offer_raw(&g.mem, &[(0x50_6000, 100, NEXT, 400)]);
    let good = frame(100, 3);
    g.send(&good, 2);
    assert_eq!(g.passt_read(), good);
    let used = g.tx_used(9);
    assert!(used.iter().all(|u| u.1 == 0));
    assert_eq!(g.stats.tx_dropped.load(Ordering::SeqCst), 8);
    assert_eq!(g.stats.tx_frames.load(Ordering::SeqCst), 1);
    assert!(g.stop().is_empty());
}

#[test]
fn hostile_receive_chains_are_returned_empty_and_the_frame_lands_after_them() {
    let mut g = Guest::start(true);
    let outside = MEM as u64 - 100;
    let mut bad = vec![
        g.rx.offer(&g.mem, &[(outside, 4096)], WRITE),
        // Read-only, where the device writes.
        g.rx.offer(&g.mem, &[(0x50_0000, 4096)], 0),
        g.rx.offer_raw(
            &g.mem,
            &[
                (0x50_1000, 100, NEXT | WRITE, 1),
                (0x50_2000, 100, NEXT | WRITE, 0),
            ],
        ),
        g.rx.offer(&g.mem, &[(0x50_3000, 0)], WRITE),
        // Too small for a header.
        g.rx.offer(&g.mem, &[(0x50_4000, 8)], WRITE),
    ];
    let good = g.give_rx(1, 2048);
    let f = frame(500, 4);
    g.passt_write(&f);
    let used = g.rx_used(6);
    let (empty, filled) = used.split_at(5);
    let mut heads: Vec<u16> = empty.iter().map(|u| u.0).collect();
    heads.sort();
    bad.sort();
    assert_eq!(heads, bad);
    assert!(empty.iter().all(|u| u.1 == 0));
    assert_eq!(filled, &[(good[0].0, 512)]);
    assert_eq!(g.read(good[0].1 + HDR_LEN as u64, 500), f);
    assert!(g.stop().is_empty());
}

#[test]
fn a_backend_that_closes_takes_the_link_down_and_transmits_are_discarded() {
    let mut g = Guest::start(true);
    g.give_rx(4, 2048);
    assert_eq!(g.link(), VIRTIO_NET_S_LINK_UP);
    g.passt.shutdown(std::net::Shutdown::Both).unwrap();
    eventually("the link goes down", || g.link() == 0);
    eventually("the config interrupt", || {
        g.interrupt.status() & INT_CONFIG != 0
    });
    for _ in 0..3 {
        g.send(&frame(100, 1), 1);
    }
    g.tx_used(3);
    let errors = g.stop();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("net0") && errors[0].contains("closed"),
        "{errors:?}"
    );
}

#[test]
fn a_malformed_length_from_the_backend_closes_it() {
    for len in [0u32, 13, MAX_FRAME as u32 + 1, u32::MAX] {
        let mut g = Guest::start(true);
        g.give_rx(4, 2048);
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 64]);
        g.passt.write_all(&bytes).unwrap();
        eventually("the link goes down", || g.link() == 0);
        assert_eq!(g.stats.rx_frames.load(Ordering::SeqCst), 0);
        let errors = g.stop();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains(&format!("{len} bytes")), "{errors:?}");
    }
}

#[test]
fn a_driver_reset_keeps_the_connection_for_the_next_driver() {
    let mut g = Guest::start(true);
    g.handle.take().unwrap().stop();
    // Activated again, as after a reset: the backend is back in place.
    let handle = crate::virtio::worker::spawn(
        "net-test".into(),
        Activated {
            worker: g.net.activate(g.net.features()).unwrap(),
            queues: vec![g.rx.queue(), g.tx.queue()],
            mem: g.mem.clone(),
            interrupt: g.interrupt.clone(),
            notify: g.notify.try_clone().unwrap(),
        },
        Arc::new(|_| {}),
        None,
    )
    .unwrap();
    g.handle = Some(handle);
    let f = frame(80, 2);
    g.send(&f, 1);
    assert_eq!(g.passt_read(), f);
    assert!(g.stop().is_empty());
}

#[test]
fn interrupts_come_only_when_the_used_index_passes_the_drivers_used_event() {
    let mut g = Guest::start(true);
    // The driver wants to hear once the tenth buffer is used.
    g.rx.set_used_event(&g.mem, 9);
    g.give_rx(13, 2048);
    for seed in 0..12 {
        g.passt_write(&frame(100, seed));
        g.rx_used(1);
    }
    // Exactly one so far: each pass raises its interrupt before the next pass starts.
    eventually("the interrupt for the tenth buffer", || g.interrupts() == 1);
    g.rx.set_used_event(&g.mem, 12);
    g.passt_write(&frame(100, 12));
    g.rx_used(1);
    eventually("the interrupt for the thirteenth buffer", || {
        g.interrupts() == 2
    });
    assert!(g.stop().is_empty());
}

#[test]
fn without_event_idx_the_no_interrupt_flag_holds_interrupts_back() {
    let mut g = Guest::start_without(VIRTIO_RING_F_EVENT_IDX);
    g.rx.set_avail_flags(&g.mem, 1);
    g.give_rx(3, 2048);
    for seed in 0..2 {
        g.passt_write(&frame(100, seed));
        g.rx_used(1);
    }
    g.rx.set_avail_flags(&g.mem, 0);
    g.passt_write(&frame(100, 2));
    g.rx_used(1);
    eventually("one interrupt, for the last frame", || g.interrupts() == 1);
    assert!(g.stop().is_empty());
}

#[test]
fn receive_kicks_are_wanted_only_while_a_frame_waits_for_buffers() {
    let mut g = Guest::start_without(VIRTIO_RING_F_EVENT_IDX);
    g.give_rx(1, 2048);
    g.passt_write(&frame(100, 1));
    g.rx_used(1);
    // The device read the ring while it had a frame to place; none waits now.
    assert_eq!(g.rx.used_flags(&g.mem), 1, "kicks declined");
    g.passt_write(&frame(100, 2));
    eventually("kicks wanted for the waiting frame", || {
        g.rx.used_flags(&g.mem) == 0
    });
    g.give_rx(1, 2048);
    g.rx_used(1);
    assert_eq!(g.rx.used_flags(&g.mem), 1, "kicks declined again");
    assert!(g.stop().is_empty());
}

/// Frames both ways with a driver that kicks only when the device asks, as Linux's does.
/// Nothing else wakes the device meanwhile (passt neither reads nor writes), so a kick the
/// device should have asked for and did not is a stall.
fn a_polite_driver_never_stalls(event_idx: bool) {
    let mut g = if event_idx {
        Guest::start(true)
    } else {
        Guest::start_without(VIRTIO_RING_F_EVENT_IDX)
    };
    let len = |i: usize| 60 + (i * 997) % 3000;
    // Transmit: bursts that the device takes whole before passt reads any of them (a read
    // would wake the device through its socket).
    for burst in 0..10 {
        let frames = burst * 20..(burst + 1) * 20;
        for i in frames.clone() {
            let old = g.tx.avail_idx;
            g.offer_tx(&frame(len(i), i as u8), 1 + i % 2);
            if g.tx.kick_wanted(&g.mem, event_idx, old) {
                g.kick();
            }
        }
        g.tx_used(20);
        for i in frames {
            assert_eq!(g.passt_read(), frame(len(i), i as u8), "frame {i}");
        }
    }
    // Receive: each frame finds the ring empty and waits; then the driver posts just enough
    // buffers for it and kicks if asked. (The pause only gives the device time to find the
    // ring empty first; if it has not, the frame simply lands.)
    for i in 0..50 {
        let f = frame(len(i), i as u8);
        g.passt_write(&f);
        std::thread::sleep(Duration::from_millis(5));
        let old = g.rx.avail_idx;
        let n = (HDR_LEN + f.len()).div_ceil(2048);
        for _ in 0..n {
            let addr = g.rx_buf(2048);
            g.rx.offer(&g.mem, &[(addr, 2048)], WRITE);
        }
        if g.rx.kick_wanted(&g.mem, event_idx, old) {
            g.kick();
        }
        g.rx_used(n);
    }
    assert_eq!(g.stats.rx_frames.load(Ordering::SeqCst), 50);
    assert_eq!(g.stats.rx_dropped.load(Ordering::SeqCst), 0);
    assert_eq!(g.stats.tx_dropped.load(Ordering::SeqCst), 0);
    assert!(g.stop().is_empty());
}

#[test]
fn a_driver_that_kicks_only_when_asked_never_stalls_with_event_idx() {
    a_polite_driver_never_stalls(true);
}

#[test]
fn a_driver_that_kicks_only_when_asked_never_stalls_with_ring_flags() {
    a_polite_driver_never_stalls(false);
}
