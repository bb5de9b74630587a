//! The virtio-fs device driven by a test playing the guest's FUSE driver in mock guest
//! memory, on a temporary host directory: INIT and the common round trips, the read-only
//! rule, ownership kept in the override xattr, escapes that stay inside, set-id bits and
//! device nodes refused, and hostile requests that get errors, never a panic.

use super::share::{Owner, OVERRIDE_XATTR};
use super::*;
use crate::virtio::worker::test_events;
use fuse_backend_rs::abi::fuse_abi::*;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::atomic::{AtomicUsize, Ordering};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::QueueT;
use vm_memory::{ByteValued, Bytes, GuestAddress};

const QSIZE: u16 = 256;
const MEM: u64 = 16 << 20;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
/// Where a request's buffers go; the queues live below.
const DATA: u64 = 0x10_0000;

const EPERM: i32 = -libc::EPERM;
const ENOENT: i32 = -libc::ENOENT;
const EBADF: i32 = -libc::EBADF;
const EINVAL: i32 = -libc::EINVAL;
const ENOSYS: i32 = -libc::ENOSYS;
const EROFS: i32 = -libc::EROFS;
const ENOMEM: i32 = -libc::ENOMEM;

fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "hk-fs-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    next: u16,
    avail_idx: u16,
    used_idx: u16,
}

impl Ring {
    fn new(base: u64) -> Ring {
        Ring {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            next: 0,
            avail_idx: 0,
            used_idx: 0,
        }
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        q.set_desc_table_address(Some(self.desc as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail as u32), Some(0));
        q.set_used_ring_address(Some(self.used as u32), Some(0));
        q.set_ready(true);
        q
    }
}

/// The device's worker and a driver for it.
struct Guest {
    mem: GuestMemory,
    worker: Box<dyn DeviceWorker>,
    queues: Vec<Queue>,
    rings: [Ring; 2],
    events: Events,
    root: PathBuf,
}

/// What the device answered: used length and the writable bytes.
struct Reply {
    used: u32,
    bytes: Vec<u8>,
}

impl Reply {
    fn error(&self) -> i32 {
        assert!(self.used >= 16, "no reply header (used {})", self.used);
        let mut h = OutHeader::default();
        h.as_mut_slice().copy_from_slice(&self.bytes[..16]);
        assert_eq!(h.len, self.used, "header length is the used length");
        h.error
    }

    fn body<T: ByteValued + Default>(&self) -> T {
        assert_eq!(self.error(), 0, "request failed");
        let mut t = T::default();
        let n = std::mem::size_of::<T>();
        t.as_mut_slice().copy_from_slice(&self.bytes[16..16 + n]);
        t
    }

    fn data(&self) -> &[u8] {
        assert_eq!(self.error(), 0, "request failed");
        &self.bytes[16..self.used as usize]
    }
}

fn msg(opcode: Opcode, nodeid: u64, uid: u32, args: &[&[u8]]) -> Vec<u8> {
    let len = 40 + args.iter().map(|a| a.len()).sum::<usize>();
    let header = InHeader {
        len: len as u32,
        opcode: opcode as u32,
        unique: 7,
        nodeid,
        uid,
        gid: uid,
        pid: 1,
        padding: 0,
    };
    let mut out = header.as_slice().to_vec();
    for a in args {
        out.extend_from_slice(a);
    }
    out
}

fn cstr(name: &str) -> Vec<u8> {
    CString::new(name).unwrap().into_bytes_with_nul()
}

impl Guest {
    fn start(read_only: bool) -> Guest {
        Self::start_in(scratch("share"), read_only)
    }

    fn start_in(root: PathBuf, read_only: bool) -> Guest {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let mut device = Fs::new(&root, "tag", read_only, Cache::Auto).unwrap();
        let rings = [Ring::new(0x1_0000), Ring::new(0x2_0000)];
        let events = test_events();
        let mut worker = device.activate(VIRTIO_F_VERSION_1).unwrap();
        worker.init(&events).unwrap();
        let mut guest = Guest {
            mem,
            worker,
            queues: vec![rings[0].queue(), rings[1].queue()],
            rings,
            events,
            root,
        };
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 0x20000,
            flags: (FsOptions::ASYNC_READ
                | FsOptions::BIG_WRITES
                | FsOptions::MAX_PAGES
                | FsOptions::DO_READDIRPLUS
                | FsOptions::PARALLEL_DIROPS
                | FsOptions::AUTO_INVAL_DATA)
                .bits() as u32,
        };
        let out: InitOut = guest
            .call(&msg(Opcode::Init, 0, 0, &[init.as_slice()]), 256)
            .body();
        assert_eq!((out.major, out.minor), (7, 33));
        assert_eq!(out.max_write, 1 << 20, "MAX_PAGES negotiated: 1 MiB writes");
        guest
    }

    /// Offers one chain of `(address, length, device-writable)` buffers on queue `q` and
    /// lets the worker serve it; returns its used entries.
    fn chain(&mut self, q: usize, descs: &[(u64, u32, bool)]) -> Vec<(u16, u32)> {
        let ring = &mut self.rings[q];
        let head = ring.next;
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let slot = (ring.next + i as u16) % QSIZE;
            let last = i + 1 == descs.len();
            let flags = if write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            let next = (slot + 1) % QSIZE;
            let d = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
            self.mem
                .write_obj(d, GuestAddress(ring.desc + 16 * u64::from(slot)))
                .unwrap();
        }
        ring.next = (ring.next + descs.len().max(1) as u16) % QSIZE;
        let at = ring.avail + 4 + 2 * u64::from(ring.avail_idx % QSIZE);
        self.mem.write_obj(head % QSIZE, GuestAddress(at)).unwrap();
        ring.avail_idx = ring.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(ring.avail_idx, GuestAddress(ring.avail + 2))
            .unwrap();
        self.worker
            .process(&mut self.queues, &self.mem, &self.events);
        let ring = &mut self.rings[q];
        let idx: u16 = self.mem.read_obj(GuestAddress(ring.used + 2)).unwrap();
        let mut used = Vec::new();
        while ring.used_idx != idx {
            let at = ring.used + 4 + 8 * u64::from(ring.used_idx % QSIZE);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            used.push((id as u16, len));
            ring.used_idx = ring.used_idx.wrapping_add(1);
        }
        used
    }

    /// Sends `request` on the request queue, split over two readable descriptors when it
    /// is long enough (layouts are the driver's choice), with `room` writable bytes.
    fn call(&mut self, request: &[u8], room: u32) -> Reply {
        self.mem.write_slice(request, GuestAddress(DATA)).unwrap();
        let reply_at = DATA + 0x20_0000;
        self.mem
            .write_slice(&vec![0xAA; room as usize], GuestAddress(reply_at))
            .unwrap();
        let len = request.len() as u32;
        let split = (len / 2).min(24);
        let used = self.chain(
            1,
            &[
                (DATA, split, false),
                (DATA + u64::from(split), len - split, false),
                (reply_at, room, true),
            ],
        );
        assert_eq!(used.len(), 1, "one request, one used entry");
        let used = used[0].1;
        let mut bytes = vec![0; room as usize];
        self.mem
            .read_slice(&mut bytes, GuestAddress(reply_at))
            .unwrap();
        Reply { used, bytes }
    }

    fn lookup_as(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        let r = self.call(&msg(Opcode::Lookup, parent, 0, &[&cstr(name)]), 4096);
        match r.error() {
            0 => Ok(r.body()),
            e => Err(e),
        }
    }

    fn lookup(&mut self, parent: u64, name: &str) -> EntryOut {
        self.lookup_as(parent, name).expect("lookup")
    }

    fn getattr(&mut self, node: u64) -> Attr {
        let a: AttrOut = self
            .call(
                &msg(Opcode::Getattr, node, 0, &[GetattrIn::default().as_slice()]),
                4096,
            )
            .body();
        a.attr
    }

    fn open(&mut self, node: u64, flags: i32) -> Result<u64, i32> {
        let open = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        let r = self.call(&msg(Opcode::Open, node, 0, &[open.as_slice()]), 4096);
        match r.error() {
            0 => Ok(r.body::<OpenOut>().fh),
            e => Err(e),
        }
    }

    fn read(&mut self, node: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let read = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let r = self.call(&msg(Opcode::Read, node, 0, &[read.as_slice()]), size + 16);
        match r.error() {
            0 => Ok(r.data().to_vec()),
            e => Err(e),
        }
    }

    fn write(&mut self, node: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, i32> {
        let write = WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        let r = self.call(&msg(Opcode::Write, node, 0, &[write.as_slice(), data]), 64);
        match r.error() {
            0 => Ok(r.body::<WriteOut>().size),
            e => Err(e),
        }
    }

    /// CREATE as guest user `uid`: the new node and its open handle.
    fn create(
        &mut self,
        parent: u64,
        name: &str,
        mode: u32,
        uid: u32,
    ) -> Result<(EntryOut, u64), i32> {
        let create = CreateIn {
            flags: (libc::O_RDWR | libc::O_CREAT) as u32,
            mode: libc::S_IFREG | mode,
            umask: 0o022,
            fuse_flags: 0,
        };
        let r = self.call(
            &msg(
                Opcode::Create,
                parent,
                uid,
                &[create.as_slice(), &cstr(name)],
            ),
            4096,
        );
        match r.error() {
            0 => {
                let entry: EntryOut = r.body();
                let n = std::mem::size_of::<EntryOut>();
                let mut open = OpenOut::default();
                open.as_mut_slice()
                    .copy_from_slice(&r.bytes[16 + n..16 + n + std::mem::size_of::<OpenOut>()]);
                Ok((entry, open.fh))
            }
            e => Err(e),
        }
    }

    fn mkdir(&mut self, parent: u64, name: &str, mode: u32, uid: u32) -> Result<EntryOut, i32> {
        let mkdir = MkdirIn { mode, umask: 0 };
        let r = self.call(
            &msg(Opcode::Mkdir, parent, uid, &[mkdir.as_slice(), &cstr(name)]),
            4096,
        );
        match r.error() {
            0 => Ok(r.body()),
            e => Err(e),
        }
    }

    fn mknod(&mut self, parent: u64, name: &str, mode: u32) -> Result<EntryOut, i32> {
        let mknod = MknodIn {
            mode,
            rdev: libc::makedev(1, 3) as u32,
            umask: 0,
            padding: 0,
        };
        let r = self.call(
            &msg(Opcode::Mknod, parent, 0, &[mknod.as_slice(), &cstr(name)]),
            4096,
        );
        match r.error() {
            0 => Ok(r.body()),
            e => Err(e),
        }
    }

    fn setattr(&mut self, node: u64, set: SetattrIn) -> Result<Attr, i32> {
        let r = self.call(&msg(Opcode::Setattr, node, 0, &[set.as_slice()]), 4096);
        match r.error() {
            0 => Ok(r.body::<AttrOut>().attr),
            e => Err(e),
        }
    }

    fn errno_of(&mut self, request: &[u8]) -> i32 {
        self.call(request, 4096).error()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn host_owner(path: &Path) -> Option<Owner> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: both pointers are valid for the sizes given.
    let n = unsafe {
        libc::lgetxattr(
            p.as_ptr(),
            OVERRIDE_XATTR.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| Owner::parse(&buf[..n as usize]).expect("well-formed override"))
}

fn euid() -> u32 {
    // SAFETY: no arguments.
    unsafe { libc::geteuid() }
}

#[test]
fn config_space_holds_the_tag_and_one_request_queue() {
    let dir = scratch("config");
    let fs = Fs::new(&dir, "src", false, Cache::Auto).unwrap();
    assert_eq!(fs.device_type(), 26);
    assert_eq!(fs.queue_max_sizes().len(), 2);
    let mut config = [0xFFu8; 44];
    fs.read_config(0, &mut config);
    assert_eq!(&config[..3], b"src");
    assert!(config[3..36].iter().all(|&b| b == 0));
    assert_eq!(&config[36..40], &1u32.to_le_bytes());
    assert_eq!(&config[40..], &[0; 4], "past the end reads as zero");
    assert!(matches!(
        Fs::new(&dir, &"x".repeat(37), false, Cache::Auto),
        Err(Error::Tag(_))
    ));
    assert!(matches!(
        Fs::new(&dir, "", false, Cache::Auto),
        Err(Error::Tag(_))
    ));
    std::fs::write(dir.join("file"), b"").unwrap();
    assert!(matches!(
        Fs::new(&dir.join("file"), "t", false, Cache::Auto),
        Err(Error::NotDir(_))
    ));
    assert!(matches!(
        Fs::new(&dir.join("missing"), "t", false, Cache::Auto),
        Err(Error::Dir { .. })
    ));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn lookup_getattr_read_write_round_trip() {
    let mut g = Guest::start(false);
    std::fs::write(g.root.join("hello"), b"hello from the host\n").unwrap();
    let e = g.lookup(ROOT_ID, "hello");
    assert_eq!(e.attr.size, 20);
    assert_eq!(g.getattr(e.nodeid).size, 20);
    let fh = g.open(e.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(
        g.read(e.nodeid, fh, 0, 4096).unwrap(),
        b"hello from the host\n"
    );
    assert_eq!(g.read(e.nodeid, fh, 6, 4).unwrap(), b"from");
    assert_eq!(g.lookup_as(ROOT_ID, "missing").unwrap_err(), ENOENT);

    // A file the guest's root makes: the host user owns it, the guest sees root.
    let (new, fh) = g.create(ROOT_ID, "from-guest", 0o644, 0).unwrap();
    let big = vec![0x5A; 1 << 20];
    assert_eq!(g.write(new.nodeid, fh, 0, &big).unwrap(), 1 << 20);
    assert_eq!(g.write(new.nodeid, fh, 1 << 20, b"tail").unwrap(), 4);
    let meta = std::fs::metadata(g.root.join("from-guest")).unwrap();
    assert_eq!(meta.len(), (1 << 20) + 4);
    assert_eq!(meta.uid(), euid(), "owned by the host user running hk");
    let attr = g.getattr(new.nodeid);
    assert_eq!((attr.uid, attr.gid, attr.mode & 0o7777), (0, 0, 0o644));
    assert_eq!(g.read(new.nodeid, fh, 1 << 20, 100).unwrap(), b"tail");

    // readdirplus lists both, with the guest's view of ownership.
    let dir = g.open_dir(ROOT_ID);
    let names = g.readdirplus(ROOT_ID, dir);
    let mut sorted: Vec<_> = names.iter().map(|(n, _)| n.as_str()).collect();
    sorted.sort();
    assert_eq!(sorted, ["from-guest", "hello"]);
    let (_, attr) = names.iter().find(|(n, _)| n == "from-guest").unwrap();
    assert_eq!((attr.uid, attr.mode & 0o777), (0, 0o644));
}

impl Guest {
    fn open_dir(&mut self, node: u64) -> u64 {
        let open = OpenIn::default();
        self.call(&msg(Opcode::Opendir, node, 0, &[open.as_slice()]), 64)
            .body::<OpenOut>()
            .fh
    }

    fn readdirplus(&mut self, node: u64, fh: u64) -> Vec<(String, Attr)> {
        let read = ReadIn {
            fh,
            size: 8192,
            ..Default::default()
        };
        let r = self.call(
            &msg(Opcode::Readdirplus, node, 0, &[read.as_slice()]),
            8192 + 16,
        );
        let mut data = r.data();
        let mut out = Vec::new();
        // fuse_direntplus: entry_out, then fuse_dirent (ino, off, namelen, type, name), padded to 8.
        let n = std::mem::size_of::<EntryOut>();
        while data.len() >= n + 24 {
            let mut e = EntryOut::default();
            e.as_mut_slice().copy_from_slice(&data[..n]);
            let namelen = u32::from_le_bytes(data[n + 16..n + 20].try_into().unwrap()) as usize;
            let name = String::from_utf8(data[n + 24..n + 24 + namelen].to_vec()).unwrap();
            out.push((name, e.attr));
            let rec = (n + 24 + namelen + 7) & !7;
            data = &data[rec.min(data.len())..];
        }
        out
    }
}

#[test]
fn ownership_the_guest_sets_is_kept_in_an_xattr_and_shown_back() {
    let mut g = Guest::start(false);
    let (e, _) = g.create(ROOT_ID, "owned", 0o640, 1234).unwrap();
    assert_eq!((e.attr.uid, e.attr.gid), (1234, 1234));
    let path = g.root.join("owned");
    assert_eq!(std::fs::metadata(&path).unwrap().uid(), euid());
    assert_eq!(
        host_owner(&path),
        Some(Owner {
            uid: 1234,
            gid: 1234,
            mode: 0o640
        })
    );
    // The host copy keeps its owner's read and write bits.
    assert_eq!(
        std::fs::metadata(&path).unwrap().mode() & 0o777,
        0o640 | 0o600
    );

    // chown and chmod: the host's owner does not change, the guest sees what it set.
    let set = SetattrIn {
        valid: (SetattrValid::UID | SetattrValid::GID | SetattrValid::MODE).bits(),
        uid: 42,
        gid: 43,
        mode: libc::S_IFREG | 0o400,
        ..Default::default()
    };
    let attr = g.setattr(e.nodeid, set).unwrap();
    assert_eq!((attr.uid, attr.gid, attr.mode & 0o7777), (42, 43, 0o400));
    let attr = g.getattr(e.nodeid);
    assert_eq!((attr.uid, attr.gid, attr.mode & 0o7777), (42, 43, 0o400));
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (euid(), 0o600));

    // A directory made by a guest user, and the override never reaches the guest's xattr calls.
    let d = g.mkdir(ROOT_ID, "dir", 0o755, 1000).unwrap();
    assert_eq!((d.attr.uid, d.attr.mode & 0o777), (1000, 0o755));
    assert_eq!(std::fs::metadata(g.root.join("dir")).unwrap().uid(), euid());
    let get = GetxattrIn {
        size: 64,
        ..Default::default()
    };
    let name = cstr("user.hk.override_stat");
    assert_eq!(
        g.errno_of(&msg(
            Opcode::Getxattr,
            d.nodeid,
            0,
            &[get.as_slice(), &name]
        )),
        ENOSYS
    );
    let set = SetxattrIn { size: 9, flags: 0 };
    assert_eq!(
        g.errno_of(&msg(
            Opcode::Setxattr,
            d.nodeid,
            1000,
            &[set.as_slice(), &name, b"0:0:04755"]
        )),
        ENOSYS
    );

    // Files the host put there show the host's owner, as a bind mount does.
    std::fs::write(g.root.join("hosts"), b"x").unwrap();
    let h = g.lookup(ROOT_ID, "hosts");
    assert_eq!(h.attr.uid, euid());
}

#[test]
fn setuid_setgid_bits_are_stripped_and_device_nodes_refused() {
    let mut g = Guest::start(false);
    let (e, _) = g.create(ROOT_ID, "suid", 0o6755, 0).unwrap();
    assert_eq!(e.attr.mode & 0o7777, 0o755);
    let meta = std::fs::metadata(g.root.join("suid")).unwrap();
    assert_eq!(meta.mode() & 0o7000, 0, "no set-id bits on the host");

    let set = SetattrIn {
        valid: SetattrValid::MODE.bits(),
        mode: libc::S_IFREG | 0o4711,
        ..Default::default()
    };
    assert_eq!(g.setattr(e.nodeid, set).unwrap().mode & 0o7777, 0o711);
    assert_eq!(
        std::fs::metadata(g.root.join("suid")).unwrap().mode() & 0o7000,
        0
    );
    let d = g.mkdir(ROOT_ID, "sgid", 0o2775, 0).unwrap();
    assert_eq!(d.attr.mode & 0o7777, 0o775);
    assert_eq!(
        std::fs::metadata(g.root.join("sgid")).unwrap().mode() & 0o7000,
        0
    );

    assert_eq!(
        g.mknod(ROOT_ID, "null", libc::S_IFCHR | 0o666).unwrap_err(),
        EPERM
    );
    assert_eq!(
        g.mknod(ROOT_ID, "sda", libc::S_IFBLK | 0o600).unwrap_err(),
        EPERM
    );
    assert!(!g.root.join("null").exists() && !g.root.join("sda").exists());
    let fifo = g.mknod(ROOT_ID, "fifo", libc::S_IFIFO | 0o644).unwrap();
    assert_eq!(fifo.attr.mode & libc::S_IFMT, libc::S_IFIFO);
    // RENAME_WHITEOUT would leave a 0:0 character device behind.
    let rename = Rename2In {
        newdir: ROOT_ID,
        flags: 1 << 2,
        padding: 0,
    };
    assert_eq!(
        g.errno_of(&msg(
            Opcode::Rename2,
            ROOT_ID,
            0,
            &[rename.as_slice(), &cstr("fifo"), &cstr("w")]
        )),
        EINVAL
    );
}

#[test]
fn a_read_only_share_refuses_every_write_on_the_host_side() {
    let root = scratch("ro");
    std::fs::write(root.join("file"), b"keep").unwrap();
    std::fs::create_dir(root.join("sub")).unwrap();
    let mut g = Guest::start_in(root, true);
    let file = g.lookup(ROOT_ID, "file");
    let sub = g.lookup(ROOT_ID, "sub");

    let fh = g.open(file.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(g.read(file.nodeid, fh, 0, 64).unwrap(), b"keep");
    assert_eq!(g.write(file.nodeid, fh, 0, b"lost").unwrap_err(), EROFS);
    assert_eq!(g.open(file.nodeid, libc::O_WRONLY).unwrap_err(), EROFS);
    assert_eq!(g.open(file.nodeid, libc::O_RDWR).unwrap_err(), EROFS);
    assert_eq!(
        g.open(file.nodeid, libc::O_RDONLY | libc::O_TRUNC)
            .unwrap_err(),
        EROFS
    );
    assert_eq!(g.create(ROOT_ID, "new", 0o644, 0).unwrap_err(), EROFS);
    assert_eq!(g.mkdir(ROOT_ID, "d", 0o755, 0).unwrap_err(), EROFS);
    assert_eq!(
        g.mknod(ROOT_ID, "p", libc::S_IFIFO | 0o644).unwrap_err(),
        EROFS
    );
    let trunc = SetattrIn {
        valid: SetattrValid::SIZE.bits(),
        size: 0,
        ..Default::default()
    };
    assert_eq!(g.setattr(file.nodeid, trunc).unwrap_err(), EROFS);
    let chmod = SetattrIn {
        valid: SetattrValid::MODE.bits(),
        mode: 0o777,
        ..Default::default()
    };
    assert_eq!(g.setattr(file.nodeid, chmod).unwrap_err(), EROFS);
    assert_eq!(
        g.errno_of(&msg(Opcode::Unlink, ROOT_ID, 0, &[&cstr("file")])),
        EROFS
    );
    assert_eq!(
        g.errno_of(&msg(Opcode::Rmdir, ROOT_ID, 0, &[&cstr("sub")])),
        EROFS
    );
    let rename = RenameIn { newdir: sub.nodeid };
    assert_eq!(
        g.errno_of(&msg(
            Opcode::Rename,
            ROOT_ID,
            0,
            &[rename.as_slice(), &cstr("file"), &cstr("moved")]
        )),
        EROFS
    );
    let link = LinkIn {
        oldnodeid: file.nodeid,
    };
    assert_eq!(
        g.errno_of(&msg(
            Opcode::Link,
            sub.nodeid,
            0,
            &[link.as_slice(), &cstr("hard")]
        )),
        EROFS
    );
    assert_eq!(
        g.errno_of(&msg(
            Opcode::Symlink,
            ROOT_ID,
            0,
            &[&cstr("s"), &cstr("/etc")]
        )),
        EROFS
    );
    let falloc = FallocateIn {
        fh,
        offset: 0,
        length: 1 << 20,
        mode: 0,
        padding: 0,
    };
    assert_eq!(
        g.errno_of(&msg(
            Opcode::Fallocate,
            file.nodeid,
            0,
            &[falloc.as_slice()]
        )),
        EROFS
    );

    assert_eq!(std::fs::read(g.root.join("file")).unwrap(), b"keep");
    let mut names: Vec<_> = std::fs::read_dir(&g.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["file", "sub"], "nothing added, removed or renamed");
    assert_eq!(
        std::fs::metadata(g.root.join("file"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
}

#[test]
fn dot_dot_and_symlinks_stay_inside_the_share() {
    let outside = scratch("outside");
    std::fs::write(outside.join("secret"), b"host only").unwrap();
    let root = scratch("inside");
    std::fs::create_dir(root.join("sub")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../..", root.join("sub/up")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), root.join("file-link")).unwrap();
    let mut g = Guest::start_in(root, false);
    let root_ino = g.getattr(ROOT_ID).ino;

    // `..` of the root is the root; `..` of a subdirectory climbs back to it, no further.
    let up = g.lookup(ROOT_ID, "..");
    assert_eq!((up.nodeid, up.attr.ino), (ROOT_ID, root_ino));
    let sub = g.lookup(ROOT_ID, "sub");
    let back = g.lookup(sub.nodeid, "..");
    assert_eq!(back.nodeid, ROOT_ID);
    assert_eq!(g.lookup(back.nodeid, "..").nodeid, ROOT_ID);
    // A name is one component.
    assert_eq!(g.lookup_as(ROOT_ID, "sub/../..").unwrap_err(), EINVAL);
    assert_eq!(g.lookup_as(ROOT_ID, "/etc").unwrap_err(), EINVAL);

    // Symlinks are shown as symlinks, never followed on the host.
    for name in ["abs", "file-link"] {
        let link = g.lookup(ROOT_ID, name);
        assert_eq!(link.attr.mode & libc::S_IFMT, libc::S_IFLNK);
        assert_eq!(g.open(link.nodeid, libc::O_RDONLY).unwrap_err(), EBADF);
        assert!(g.lookup_as(link.nodeid, "secret").is_err());
        assert!(g.create(link.nodeid, "planted", 0o644, 0).is_err());
        assert!(g.mkdir(link.nodeid, "planted-dir", 0o755, 0).is_err());
        let set = SetattrIn {
            valid: SetattrValid::SIZE.bits(),
            size: 0,
            ..Default::default()
        };
        assert!(g.setattr(link.nodeid, set).is_err());
        let r = g.call(&msg(Opcode::Readlink, link.nodeid, 0, &[]), 4096);
        assert!(r.data().starts_with(outside.as_os_str().as_bytes()));
    }
    let up = g.lookup(sub.nodeid, "up");
    assert_eq!(up.attr.mode & libc::S_IFMT, libc::S_IFLNK);

    // Links and renames name a directory of the share as their target, by node id.
    let link = LinkIn {
        oldnodeid: g.lookup(ROOT_ID, "file-link").nodeid,
    };
    assert_eq!(
        g.errno_of(&msg(Opcode::Link, 999, 0, &[link.as_slice(), &cstr("x")])),
        EBADF
    );
    let rename = RenameIn { newdir: 999 };
    assert_eq!(
        g.errno_of(&msg(
            Opcode::Rename,
            ROOT_ID,
            0,
            &[rename.as_slice(), &cstr("sub"), &cstr("x")]
        )),
        EBADF
    );

    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"host only");
    let planted: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
    assert_eq!(planted.len(), 1, "nothing created outside the share");
    std::fs::remove_dir_all(outside).unwrap();
}

#[test]
fn hostile_requests_get_error_replies_never_a_panic() {
    let mut g = Guest::start(false);
    std::fs::write(g.root.join("f"), b"data").unwrap();
    let f = g.lookup(ROOT_ID, "f");

    // Unknown and unserved opcodes.
    for op in [
        0u32,
        7,
        19,
        37,
        39,
        40,
        41,
        47,
        48,
        49,
        50,
        99,
        4096,
        u32::MAX,
    ] {
        let mut m = msg(
            Opcode::Getattr,
            ROOT_ID,
            0,
            &[GetattrIn::default().as_slice()],
        );
        m[4..8].copy_from_slice(&op.to_le_bytes());
        assert_eq!(g.errno_of(&m), ENOSYS, "opcode {op}");
    }
    // Node ids and handles the device never gave out.
    let a = GetattrIn::default();
    assert_eq!(
        g.errno_of(&msg(Opcode::Getattr, 12345, 0, &[a.as_slice()])),
        EBADF
    );
    assert_eq!(
        g.errno_of(&msg(Opcode::Getattr, 0, 0, &[a.as_slice()])),
        EBADF
    );
    assert_eq!(g.read(f.nodeid, 999, 0, 16).unwrap_err(), EBADF);
    assert_eq!(g.read(f.nodeid, u64::MAX, 0, 16).unwrap_err(), EBADF);
    assert_eq!(g.write(f.nodeid, 12, 0, b"x").unwrap_err(), EBADF);
    let fh = g.open(f.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(
        g.read(12345, fh, 0, 16).unwrap_err(),
        EBADF,
        "handle of another node"
    );

    // A header whose length claims more than was sent, or less than its own size.
    let mut m = msg(Opcode::Lookup, ROOT_ID, 0, &[&cstr("f")]);
    m[0..4].copy_from_slice(&4000u32.to_le_bytes());
    assert_eq!(g.errno_of(&m), EINVAL);
    m[0..4].copy_from_slice(&10u32.to_le_bytes());
    assert_eq!(g.errno_of(&m), EINVAL);
    m[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(g.errno_of(&m), ENOMEM, "over the 1 MiB request bound");
    // A name without its NUL, an argument struct cut short.
    assert_eq!(
        g.errno_of(&msg(Opcode::Lookup, ROOT_ID, 0, &[b"f"])),
        EINVAL
    );
    assert_eq!(
        g.errno_of(&msg(Opcode::Open, f.nodeid, 0, &[&[0u8; 3]])),
        EINVAL
    );
    assert_eq!(
        g.errno_of(&msg(Opcode::Read, f.nodeid, 0, &[&[0u8; 10]])),
        EINVAL
    );
    // A write claiming more data than it carries; a read asking for more than the room.
    let w = WriteIn {
        fh,
        size: 1 << 20,
        ..Default::default()
    };
    assert_ne!(
        g.errno_of(&msg(Opcode::Write, f.nodeid, 0, &[w.as_slice(), b"abc"])),
        0
    );
    let r = ReadIn {
        fh,
        size: u32::MAX,
        ..Default::default()
    };
    assert_ne!(
        g.errno_of(&msg(Opcode::Read, f.nodeid, 0, &[r.as_slice()])),
        0
    );
    // A readdir asking for 4 GiB: refused, nothing of that size allocated.
    let dir = g.open_dir(ROOT_ID);
    let r = ReadIn {
        fh: dir,
        size: u32::MAX,
        ..Default::default()
    };
    assert_eq!(
        g.errno_of(&msg(Opcode::Readdirplus, ROOT_ID, 0, &[r.as_slice()])),
        ENOMEM
    );
    // A batch forget of 4 billion nodes: no reply (none is expected), no allocation.
    let bf = BatchForgetIn {
        count: u32::MAX,
        dummy: 0,
    };
    let used = g
        .call(&msg(Opcode::BatchForget, 0, 0, &[bf.as_slice()]), 16)
        .used;
    assert_eq!(used, 0);
    // setxattr with a size that disagrees with its value.
    let sx = SetxattrIn {
        size: 100,
        flags: 0,
    };
    assert_eq!(
        g.errno_of(&msg(
            Opcode::Setxattr,
            f.nodeid,
            0,
            &[sx.as_slice(), b"user.a\0v"]
        )),
        EINVAL
    );
    // A second INIT, then the share still works.
    let init = InitIn {
        major: 7,
        minor: 31,
        ..Default::default()
    };
    assert_eq!(g.errno_of(&msg(Opcode::Init, 0, 0, &[init.as_slice()])), 0);
    let init = InitIn {
        major: 1,
        ..Default::default()
    };
    assert_ne!(g.errno_of(&msg(Opcode::Init, 0, 0, &[init.as_slice()])), 0);
    assert_eq!(g.lookup(ROOT_ID, "f").attr.size, 4);
}

#[test]
fn hostile_descriptor_chains_are_answered_or_dropped() {
    let mut g = Guest::start(false);
    let req = msg(
        Opcode::Getattr,
        ROOT_ID,
        0,
        &[GetattrIn::default().as_slice()],
    );
    g.mem.write_slice(&req, GuestAddress(DATA)).unwrap();
    let reply = DATA + 0x1000;
    let n = req.len() as u32;

    // Too short for a header: an error reply (its unique unknown), not a panic.
    let used = g.chain(1, &[(DATA, 10, false), (reply, 4096, true)]);
    assert_eq!(used[0].1, 16);
    // No room for a reply at all.
    assert_eq!(g.chain(1, &[(DATA, n, false)])[0].1, 0);
    assert_eq!(g.chain(1, &[(DATA, n, false), (reply, 8, true)])[0].1, 0);
    // Only writable buffers.
    assert_eq!(g.chain(1, &[(reply, 4096, true)])[0].1, 16);
    // Readable buffer outside guest memory, or straddling its end.
    assert_eq!(
        g.chain(1, &[(MEM + 0x1000, n, false), (reply, 4096, true)])[0].1,
        16
    );
    assert_eq!(
        g.chain(1, &[(MEM - 8, n, false), (reply, 4096, true)])[0].1,
        16
    );
    assert_eq!(
        g.chain(1, &[(u64::MAX - 4, n, false), (reply, 4096, true)])[0].1,
        16
    );
    // Writable buffer outside guest memory: nothing can be written, nothing is.
    assert_eq!(
        g.chain(1, &[(DATA, n, false), (MEM + 0x1000, 4096, true)])[0].1,
        0
    );
    assert_eq!(
        g.chain(1, &[(DATA, n, false), (u64::MAX - 8, u32::MAX, true)])[0].1,
        0
    );
    // A writable buffer past the end after a good one: the request is refused with EFAULT.
    let used = g.chain(1, &[(DATA, n, false), (reply, 64, true), (MEM, 4096, true)]);
    assert_eq!(used[0].1, 16);
    let mut h = OutHeader::default();
    g.mem
        .read_slice(h.as_mut_slice(), GuestAddress(reply))
        .unwrap();
    assert_eq!(h.error, -libc::EFAULT);
    // Zero-length buffers everywhere.
    assert_eq!(g.chain(1, &[(0, 0, false), (0, 0, true)])[0].1, 0);
    // Huge lengths over real memory (overlapping buffers): bounded by what the guest has.
    let used = g.chain(1, &[(DATA, n, false), (0, (MEM as u32) - 1, true)]);
    assert_eq!(used[0].1, 16 + std::mem::size_of::<AttrOut>() as u32);
    // Requests on the hiprio queue: forgets get no reply, anything else is served.
    let forget = msg(Opcode::Forget, 55, 0, &[ForgetIn { nlookup: 1 }.as_slice()]);
    g.mem.write_slice(&forget, GuestAddress(DATA)).unwrap();
    assert_eq!(g.chain(0, &[(DATA, forget.len() as u32, false)])[0].1, 0);
    g.mem.write_slice(&req, GuestAddress(DATA)).unwrap();
    assert_eq!(
        g.chain(0, &[(DATA, n, false), (reply, 4096, true)])[0].1,
        16 + std::mem::size_of::<AttrOut>() as u32
    );

    // Still serving.
    assert_eq!(g.getattr(ROOT_ID).mode & libc::S_IFMT, libc::S_IFDIR);
}

#[test]
fn the_override_format_round_trips_and_rejects_garbage() {
    let o = Owner {
        uid: 0,
        gid: 1000,
        mode: 0o1755,
    };
    assert_eq!(o.encode(), "0:1000:01755");
    assert_eq!(Owner::parse(o.encode().as_bytes()), Some(o));
    for bad in [
        "",
        "1:2",
        "1:2:3:4",
        "a:2:0644",
        "1:2:999",
        "1:-2:0644",
        "\u{ff}",
    ] {
        assert_eq!(Owner::parse(bad.as_bytes()), None, "{bad:?}");
    }
}
