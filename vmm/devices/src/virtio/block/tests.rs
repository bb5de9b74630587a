//! A hostile guest's requests, built in mock guest memory: every malformed chain gets an
//! error status or is dropped, the disk is only touched by well-formed requests, and
//! nothing panics.

use super::*;
use std::io::{Read, Seek, SeekFrom, Write};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const MEM_SIZE: usize = 0x10_0000;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;
const SECTORS: u64 = 16;
const QSIZE: u16 = 16;

const IN: u32 = 0;
const OUT: u32 = 1;
const FLUSH: u32 = 4;
const GET_ID: u32 = 8;
const OK: u8 = 0;
const IOERR: u8 = 1;
const UNSUPP: u8 = 2;

struct Setup {
    mem: GuestMemory,
    disk: Block,
    worker: Box<dyn DeviceWorker>,
    path: std::path::PathBuf,
}

fn setup(read_only: bool) -> Setup {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "hk-blk-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let pattern: Vec<u8> = (0..SECTORS * SECTOR_SIZE)
        .map(|i| (i / 512) as u8)
        .collect();
    file.write_all(&pattern).unwrap();
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let mut disk = Block::new(
        file,
        SECTORS,
        read_only,
        *b"hk-test-disk-id-0123",
        "blk-test".into(),
    );
    let worker = disk.activate(VIRTIO_F_VERSION_1).unwrap();
    Setup {
        mem,
        disk,
        worker,
        path,
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

impl Setup {
    fn header(&self, kind: u32, sector: u64) {
        self.mem.write_obj(kind.to_le(), GuestAddress(HDR)).unwrap();
        self.mem
            .write_obj(sector.to_le(), GuestAddress(HDR + 8))
            .unwrap();
        // A status byte the device must overwrite.
        self.mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
    }

    /// Puts `descs` (flags and next as given) on a fresh queue, runs the device, and returns
    /// the used-ring entries (head, len) it produced.
    fn run(&mut self, descs: &[RawDescriptor]) -> Vec<(u32, u32)> {
        let mock = MockSplitQueue::create(&self.mem, GuestAddress(0), QSIZE);
        mock.add_desc_chains(descs, 0).unwrap();
        let queue: Queue = mock.create_queue().unwrap();
        self.worker.process(
            &mut [queue],
            &self.mem,
            &crate::virtio::worker::test_events(),
        );
        let used = mock.used();
        (0..used.idx().load())
            .map(|i| {
                let e = used.ring().ref_at(i as usize).unwrap().load();
                (e.id(), e.len())
            })
            .collect()
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn disk_bytes(&mut self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.disk.file.seek(SeekFrom::Start(0)).unwrap();
        self.disk.file.read_to_end(&mut buf).unwrap();
        buf
    }
}

/// header → data → status, linked in order.
fn chain(data: &[(u64, u32, u16)]) -> Vec<RawDescriptor> {
    let mut descs = vec![desc(HDR, 16, NEXT, 1)];
    for (i, &(addr, len, flags)) in data.iter().enumerate() {
        descs.push(desc(addr, len, flags | NEXT, i as u16 + 2));
    }
    descs.push(desc(STATUS, 1, WRITE, 0));
    descs
}

#[test]
fn a_well_formed_read_returns_the_sectors() {
    let mut s = setup(false);
    s.header(IN, 3);
    let used = s.run(&chain(&[(DATA, 1024, WRITE)]));
    assert_eq!(used, [(0, 1025)]);
    assert_eq!(s.status(), OK);
    let mut buf = [0u8; 1024];
    s.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert!(buf[..512].iter().all(|&b| b == 3) && buf[512..].iter().all(|&b| b == 4));
}

#[test]
fn a_well_formed_write_lands_on_the_disk() {
    let mut s = setup(false);
    s.header(OUT, 2);
    s.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(s.run(&chain(&[(DATA, 512, 0)])), [(0, 1)]);
    assert_eq!(s.status(), OK);
    let disk = s.disk_bytes();
    assert!(disk[1024..1536].iter().all(|&b| b == 0xab));
    assert!(disk[1536..2048].iter().all(|&b| b == 3));
}

#[test]
fn reads_and_writes_past_the_end_fail() {
    for (sector, len) in [
        (SECTORS, 512),
        (SECTORS - 1, 1024),
        (u64::MAX / 512, 512),
        (u64::MAX, 512),
    ] {
        for kind in [IN, OUT] {
            let mut s = setup(false);
            s.header(kind, sector);
            let flags = if kind == IN { WRITE } else { 0 };
            assert_eq!(s.run(&chain(&[(DATA, len, flags)])), [(0, 1)]);
            assert_eq!(s.status(), IOERR, "kind {kind} sector {sector} len {len}");
            let pattern: Vec<u8> = (0..SECTORS * SECTOR_SIZE)
                .map(|i| (i / 512) as u8)
                .collect();
            assert_eq!(s.disk_bytes(), pattern);
        }
    }
}

#[test]
fn a_write_to_a_read_only_disk_fails_and_changes_nothing() {
    let mut s = setup(true);
    s.header(OUT, 0);
    s.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(s.run(&chain(&[(DATA, 512, 0)])), [(0, 1)]);
    assert_eq!(s.status(), IOERR);
    assert!(s.disk_bytes()[..512].iter().all(|&b| b == 0));
    assert_ne!(s.disk.features() & VIRTIO_BLK_F_RO, 0);
}

#[test]
fn buffers_outside_guest_memory_fail_without_touching_the_disk() {
    for addr in [MEM_SIZE as u64, MEM_SIZE as u64 - 256, u64::MAX - 100] {
        let mut s = setup(false);
        s.header(OUT, 0);
        assert_eq!(s.run(&chain(&[(addr, 512, 0)])), [(0, 1)]);
        assert_eq!(s.status(), IOERR);
        assert!(s.disk_bytes()[..512].iter().all(|&b| b == 0));

        let mut s = setup(false);
        s.header(IN, 0);
        assert_eq!(s.run(&chain(&[(addr, 512, WRITE)])), [(0, 1)]);
        assert_eq!(s.status(), IOERR);
    }
}

#[test]
fn data_in_the_wrong_direction_or_of_partial_sectors_fails() {
    let mut s = setup(false);
    s.header(IN, 0);
    // The device would have to write into a buffer the driver marked read-only.
    assert_eq!(s.run(&chain(&[(DATA, 512, 0)])), [(0, 1)]);
    assert_eq!(s.status(), IOERR);

    let mut s = setup(false);
    s.header(OUT, 0);
    assert_eq!(s.run(&chain(&[(DATA, 100, 0)])), [(0, 1)]);
    assert_eq!(s.status(), IOERR);
    assert!(s.disk_bytes()[..512].iter().all(|&b| b == 0));
}

#[test]
fn malformed_chains_are_dropped() {
    let cases: Vec<(&str, Vec<RawDescriptor>)> = vec![
        ("a lone descriptor", vec![desc(HDR, 16, 0, 0)]),
        (
            "a zero-length header",
            vec![desc(HDR, 0, NEXT, 1), desc(STATUS, 1, WRITE, 0)],
        ),
        (
            "a short header",
            vec![desc(HDR, 8, NEXT, 1), desc(STATUS, 1, WRITE, 0)],
        ),
        (
            "a device-writable header",
            vec![desc(HDR, 16, NEXT | WRITE, 1), desc(STATUS, 1, WRITE, 0)],
        ),
        (
            "a zero-length status",
            vec![desc(HDR, 16, NEXT, 1), desc(STATUS, 0, WRITE, 0)],
        ),
        (
            "a read-only status",
            vec![desc(HDR, 16, NEXT, 1), desc(STATUS, 1, 0, 0)],
        ),
        (
            "a header outside memory",
            vec![
                desc(MEM_SIZE as u64, 16, NEXT, 1),
                desc(STATUS, 1, WRITE, 0),
            ],
        ),
        (
            "a status outside memory",
            vec![desc(HDR, 16, NEXT, 1), desc(u64::MAX, 1, WRITE, 0)],
        ),
        (
            "a loop",
            vec![desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE | NEXT, 0)],
        ),
        ("a self-loop", vec![desc(HDR, 16, NEXT, 0)]),
        (
            "a next index past the queue",
            vec![desc(HDR, 16, NEXT, QSIZE + 3), desc(STATUS, 1, WRITE, 0)],
        ),
    ];
    for (what, descs) in cases {
        let mut s = setup(false);
        s.header(OUT, 0);
        s.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(
            s.run(&descs),
            [(0, 0)],
            "{what}: returned with used length 0"
        );
        assert_eq!(s.status(), 0xee, "{what}: no status written");
        assert!(s.disk_bytes()[..512].iter().all(|&b| b == 0), "{what}");
    }
}

#[test]
fn a_data_loop_inside_a_chain_is_dropped_not_followed_forever() {
    let mut s = setup(false);
    s.header(IN, 0);
    // header → data → data → back to the first data descriptor.
    let descs = [
        desc(HDR, 16, NEXT, 1),
        desc(DATA, 512, WRITE | NEXT, 2),
        desc(DATA + 512, 512, WRITE | NEXT, 1),
    ];
    assert_eq!(s.run(&descs), [(0, 0)]);
}

#[test]
fn an_avail_index_far_ahead_of_the_ring_is_not_followed() {
    let mut s = setup(false);
    s.header(IN, 0);
    let mock = MockSplitQueue::create(&s.mem, GuestAddress(0), QSIZE);
    mock.add_desc_chains(&chain(&[(DATA, 512, WRITE)]), 0)
        .unwrap();
    // The driver claims 1000 new buffers in a 16-entry ring.
    mock.avail().idx().store(1000u16.to_le());
    let queue: Queue = mock.create_queue().unwrap();
    let served = s
        .worker
        .process(&mut [queue], &s.mem, &crate::virtio::worker::test_events());
    assert!(!served.notify);
    assert_eq!(mock.used().idx().load(), 0);
}

#[test]
fn flush_get_id_and_unknown_requests() {
    let mut s = setup(false);
    s.header(FLUSH, 0);
    assert_eq!(s.run(&chain(&[])), [(0, 1)]);
    assert_eq!(s.status(), OK);

    let mut s = setup(false);
    s.header(GET_ID, 0);
    assert_eq!(s.run(&chain(&[(DATA, 64, WRITE)])), [(0, 21)]);
    assert_eq!(s.status(), OK);
    let mut id = [0u8; 20];
    s.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"hk-test-disk-id-0123");

    // A GET_ID buffer the device may not write is refused.
    let mut s = setup(false);
    s.header(GET_ID, 0);
    assert_eq!(s.run(&chain(&[(DATA, 64, 0)])), [(0, 1)]);
    assert_eq!(s.status(), IOERR);

    let mut s = setup(false);
    s.header(99, 0);
    assert_eq!(s.run(&chain(&[(DATA, 512, WRITE)])), [(0, 1)]);
    assert_eq!(s.status(), UNSUPP);
}

/// Virtio 1.x §2.7.4: the device must not assume a descriptor layout. Each of these
/// requests is well formed, just not laid out as header, data, status descriptors.
#[test]
fn any_descriptor_layout_is_understood() {
    // A write whose data shares the header's descriptor.
    let mut s = setup(false);
    s.header(OUT, 2);
    s.mem
        .write_slice(&[0xcd; 512], GuestAddress(HDR + 16))
        .unwrap();
    assert_eq!(
        s.run(&[desc(HDR, 16 + 512, NEXT, 1), desc(STATUS, 1, WRITE, 0)]),
        [(0, 1)]
    );
    assert_eq!(s.status(), OK);
    assert!(s.disk_bytes()[1024..1536].iter().all(|&b| b == 0xcd));

    // A header split over two descriptors.
    let mut s = setup(false);
    s.header(IN, 5);
    let used = s.run(&[
        desc(HDR, 4, NEXT, 1),
        desc(HDR + 4, 12, NEXT, 2),
        desc(DATA, 512, WRITE | NEXT, 3),
        desc(STATUS, 1, WRITE, 0),
    ]);
    assert_eq!(used, [(0, 513)]);
    assert_eq!(s.status(), OK);
    let mut buf = [0u8; 512];
    s.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert!(buf.iter().all(|&b| b == 5));

    // A read whose status byte ends the data's descriptor.
    let mut s = setup(false);
    s.header(IN, 7);
    s.mem.write_obj(0xeeu8, GuestAddress(DATA + 512)).unwrap();
    let used = s.run(&[desc(HDR, 16, NEXT, 1), desc(DATA, 513, WRITE, 0)]);
    assert_eq!(used, [(0, 513)]);
    let status: u8 = s.mem.read_obj(GuestAddress(DATA + 512)).unwrap();
    assert_eq!(status, OK);
    s.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert!(buf.iter().all(|&b| b == 7));
}

#[test]
fn readable_descriptors_after_writable_ones_are_dropped() {
    let mut s = setup(false);
    s.header(OUT, 0);
    let used = s.run(&[
        desc(HDR, 16, NEXT, 1),
        desc(STATUS, 1, WRITE | NEXT, 2),
        desc(DATA, 512, NEXT, 3),
        desc(STATUS + 8, 1, WRITE, 0),
    ]);
    assert_eq!(used, [(0, 0)]);
    assert!(s.disk_bytes()[..512].iter().all(|&b| b == 0));
}

/// GET_ID answers the serial the VMM's caller chose, not anything about the host file.
#[test]
fn get_id_is_the_configured_serial() {
    let s = setup(false);
    let mut disk = Block::open(&s.path, true, "hk-root").unwrap();
    let mut worker = disk.activate(VIRTIO_F_VERSION_1).unwrap();
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    mem.write_obj(GET_ID.to_le(), GuestAddress(HDR)).unwrap();
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QSIZE);
    mock.add_desc_chains(&chain(&[(DATA, 20, WRITE)]), 0)
        .unwrap();
    let queue: Queue = mock.create_queue().unwrap();
    worker.process(&mut [queue], &mem, &crate::virtio::worker::test_events());
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"hk-root\0\0\0\0\0\0\0\0\0\0\0\0\0");
    assert!(Block::open(&s.path, true, "a-serial-longer-than-twenty").is_err());
}

/// A guest that keeps the queue full gets a bounded pass, then the thread moves on.
#[test]
fn one_pass_serves_a_bounded_number_of_requests() {
    let mut s = setup(false);
    s.header(FLUSH, 0);
    let mock = MockSplitQueue::create(&s.mem, GuestAddress(0), 256);
    let mut descs = Vec::new();
    for i in 0..100u16 {
        descs.push(desc(HDR, 16, NEXT, 2 * i + 1));
        descs.push(desc(STATUS, 1, WRITE, 0));
    }
    mock.add_desc_chains(&descs, 0).unwrap();
    let mut queue: Queue = mock.create_queue().unwrap();
    let events = crate::virtio::worker::test_events();
    let first = s
        .worker
        .process(std::slice::from_mut(&mut queue), &s.mem, &events);
    assert!(first.more);
    assert_eq!(mock.used().idx().load(), BUDGET as u16);
    let mut passes = 1;
    while s
        .worker
        .process(std::slice::from_mut(&mut queue), &s.mem, &events)
        .more
    {
        passes += 1;
    }
    assert_eq!(mock.used().idx().load(), 100);
    assert_eq!(passes, 100 / BUDGET);
}
