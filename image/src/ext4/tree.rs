//! Applies layer tar streams to an in-memory tree of metadata, streaming file contents into
//! the image's data area as they are read.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::rc::Rc;

use super::disk::{Dropped, Extent, BLOCK_SIZE, FIRST_DATA_BLOCK, LINK_MAX, MAX_EXTENT_LEN};
use super::{EntryError, Error, Options};

pub(super) type NodeId = usize;
pub(super) const ROOT: NodeId = 0;

const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
const MAX_NAME: usize = 255;
/// Longest tar path accepted, Linux's PATH_MAX: a PAX record can carry a megabyte of path,
/// and every component may imply a directory.
const MAX_PATH: usize = 4096;
/// Deepest path accepted. Real trees stay within a few dozen levels; the cap keeps the
/// per-entry walk short whatever the entry budget.
const MAX_DEPTH: usize = 1024;
/// A symlink target must fit in one block, like the kernel's PATH_MAX.
const MAX_SYMLINK: usize = 4095;

pub(super) struct Meta {
    /// Permission bits, setuid/setgid/sticky included.
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Full names (`user.foo`) and values, as the tar's `SCHILY.xattr.` records carry them.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    fn implicit_dir() -> Self {
        Self {
            perm: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: Vec::new(),
        }
    }
}

pub(super) enum Kind {
    Dir(BTreeMap<Vec<u8>, Child>),
    File { size: u64, extents: Vec<Extent> },
    Symlink(Vec<u8>),
    CharDev { major: u32, minor: u32 },
    BlockDev { major: u32, minor: u32 },
    Fifo,
}

pub(super) struct Node {
    pub meta: Meta,
    pub kind: Kind,
}

/// A name in a directory. Whiteouts and opaque markers only hide what lower layers wrote,
/// so each name records which layer wrote it and which layer last wrote anything below it.
#[derive(Clone, Copy)]
pub(super) struct Child {
    pub node: NodeId,
    /// The layer that last wrote this name (listed, or implied by a path).
    pub layer: usize,
    /// The last layer that wrote this name or a path through it: a directory a layer only
    /// passed through is still lower content itself, but what the layer put below is not.
    pub touched: usize,
}

pub(super) struct Tree {
    pub nodes: Vec<Node>,
}

/// The image's data area: file contents go to consecutive blocks from `next_block`, written
/// sequentially through one buffer.
pub(super) struct DataArea {
    pub out: BufWriter<File>,
    pub next_block: u64,
    /// The file block being assembled: written out when complete unless all zero.
    pending: Vec<u8>,
}

pub(super) struct Builder<'o> {
    tree: Tree,
    data: DataArea,
    opts: &'o Options,
    /// Read buffer for file contents.
    buf: Vec<u8>,
    entries: u64,
    total_data: u64,
    /// Names ever given to each multiply-linked node: an upper bound on its link count.
    link_names: HashMap<NodeId, u32>,
    /// The current layer's reader state, to mark file-content reads.
    stream: Rc<StreamState>,
    /// Attributes the current entry lost, until its layer's name and path are at hand.
    dropped: Dropped,
    warnings: Vec<String>,
    /// Warnings beyond [`MAX_WARNINGS`], counted only.
    unlisted: u64,
}

/// Warnings listed one per line; the rest are counted, so a hostile layer cannot fill memory
/// or a screen with them.
const MAX_WARNINGS: usize = 20;

/// Most bytes of headers, PAX records, GNU long names and skipped data accepted between two
/// entries' contents. The tar crate reads PAX and long-name records into memory whole, so
/// a forged multi-gigabyte record must fail before it is allocated.
const META_LIMIT: u64 = 1 << 20;

/// Shared between the builder and the reader under the tar crate.
#[derive(Default)]
struct StreamState {
    /// The tar reader hit end-of-file: the tar crate treats EOF where a header should start
    /// as the end of the archive, which would accept a stream cut at an entry boundary.
    eof: Cell<bool>,
    /// Set while file contents are read; otherwise reads are metadata.
    in_data: Cell<bool>,
    meta_bytes: Cell<u64>,
}

struct Guarded<R> {
    inner: R,
    state: Rc<StreamState>,
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let state = &self.state;
        let buf = if state.in_data.get() {
            buf
        } else {
            let left = META_LIMIT.saturating_sub(state.meta_bytes.get());
            if left == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("more than {META_LIMIT} bytes of headers or extension records for one entry"),
                ));
            }
            let len = buf.len().min(left as usize);
            &mut buf[..len]
        };
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            state.eof.set(true);
        }
        if !state.in_data.get() {
            state.meta_bytes.set(state.meta_bytes.get() + n as u64);
        }
        Ok(n)
    }
}

/// What one tar entry asks for, before it is placed in the tree.
enum New {
    Dir,
    File { size: u64 },
    Hardlink(Vec<u8>),
    Symlink(Vec<u8>),
    CharDev { major: u32, minor: u32 },
    BlockDev { major: u32, minor: u32 },
    Fifo,
}

impl<'o> Builder<'o> {
    pub fn new(file: File, opts: &'o Options) -> io::Result<Self> {
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.seek(io::SeekFrom::Start(FIRST_DATA_BLOCK * BLOCK_SIZE))?;
        let root = Node {
            meta: Meta::implicit_dir(),
            kind: Kind::Dir(BTreeMap::new()),
        };
        Ok(Self {
            tree: Tree { nodes: vec![root] },
            data: DataArea {
                out,
                next_block: FIRST_DATA_BLOCK,
                pending: vec![0; BLOCK_SIZE as usize],
            },
            buf: vec![0; 256 * 1024],
            opts,
            entries: 0,
            total_data: 0,
            link_names: HashMap::new(),
            stream: Rc::default(),
            dropped: Vec::new(),
            warnings: Vec::new(),
            unlisted: 0,
        })
    }

    /// What was left out, one line each, the overflow summed up in a last line.
    pub fn take_warnings(&mut self) -> Vec<String> {
        let mut warnings = std::mem::take(&mut self.warnings);
        if self.unlisted > 0 {
            warnings.push(format!("{} more xattrs dropped", self.unlisted));
        }
        warnings
    }

    pub fn into_parts(self) -> (Tree, DataArea) {
        (self.tree, self.data)
    }

    pub fn apply_layer(&mut self, layer: usize, name: &str, tar: impl Read) -> Result<(), Error> {
        let tar_err = |source| Error::Tar {
            layer: name.to_string(),
            source,
        };
        let state = Rc::new(StreamState::default());
        self.stream = Rc::clone(&state);
        let mut archive = tar::Archive::new(Guarded {
            inner: tar,
            state: Rc::clone(&state),
        });
        for entry in archive.entries().map_err(tar_err)? {
            let mut entry = entry.map_err(tar_err)?;
            let pax = read_pax(&mut entry)
                .map_err(|kind| entry_error(name, &entry.path_bytes(), kind))?;
            // PAX sparse files carry their real name apart from the placeholder header name.
            let path = match pax.sparse.as_ref().and_then(|s| s.name.clone()) {
                Some(real) => real,
                None => entry.path_bytes().into_owned(),
            };
            self.count_entry()
                .map_err(|kind| entry_error(name, &path, kind))?;
            self.apply_entry(layer, &path, pax, &mut entry)
                .map_err(|kind| entry_error(name, &path, kind))?;
            for (xattr, reason) in std::mem::take(&mut self.dropped) {
                if self.warnings.len() < MAX_WARNINGS {
                    self.warnings.push(format!(
                        "layer {name}: entry {:?}: xattr {:?} dropped: {reason}",
                        lossy(&path),
                        lossy(&xattr[..xattr.len().min(MAX_NAME)])
                    ));
                } else {
                    self.unlisted += 1;
                }
            }
            state.meta_bytes.set(0);
        }
        drop(archive);
        if state.eof.get() {
            return Err(Error::MissingEnd {
                layer: name.to_string(),
            });
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        layer: usize,
        raw_path: &[u8],
        pax: Pax,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), EntryError> {
        let header = entry.header();
        let kind = header.entry_type();
        // A global PAX header (`git archive` writes one) is not a file; like Docker, ignore it.
        if kind == tar::EntryType::XGlobalHeader {
            return Ok(());
        }
        let components = normalize(raw_path)?;
        let (parent_path, name) = match components.split_last() {
            Some((name, parent)) => (parent, Some(name.as_slice())),
            None => (&components[..0], None),
        };

        if let Some(name) = name {
            if name == OPAQUE {
                let dir = self.walk(parent_path, layer, true)?;
                self.make_opaque(dir, layer);
                return Ok(());
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT) {
                if hidden.starts_with(WHITEOUT) {
                    return Ok(());
                }
                if let Ok(dir) = self.walk(parent_path, layer, false) {
                    match self.child(dir, hidden) {
                        Some(c) if c.touched < layer => {
                            if let Kind::Dir(children) = &mut self.tree.nodes[dir].kind {
                                children.remove(hidden);
                            }
                        }
                        // This layer already wrote it or something below it (the tar listed
                        // that before the whiteout): only what lower layers put there goes.
                        Some(c) => {
                            if c.layer < layer {
                                self.tree.nodes[c.node].meta = Meta::implicit_dir();
                                self.set_child(dir, hidden, c.node, layer);
                            }
                            self.make_opaque(c.node, layer);
                        }
                        None => {}
                    }
                }
                return Ok(());
            }
        }

        let new = match kind {
            tar::EntryType::Directory => New::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                New::File { size: entry.size() }
            }
            tar::EntryType::Link => New::Hardlink(link_name(entry)?),
            tar::EntryType::Symlink => New::Symlink(link_name(entry)?),
            tar::EntryType::Char => {
                let (major, minor) = device(header)?;
                New::CharDev { major, minor }
            }
            tar::EntryType::Block => {
                let (major, minor) = device(header)?;
                New::BlockDev { major, minor }
            }
            tar::EntryType::Fifo => New::Fifo,
            other => return Err(EntryError::Unsupported(format!("{other:?}"))),
        };
        let sparse = pax.sparse.clone();
        let (meta, dropped) = read_meta(entry.header(), pax)?;
        self.dropped = dropped;

        let Some(name) = name else {
            // The root itself, "./": only its metadata can change.
            if !matches!(new, New::Dir) {
                return Err(EntryError::RootNotDir);
            }
            self.tree.nodes[ROOT].meta = meta;
            return Ok(());
        };
        let parent = self.walk(parent_path, layer, true)?;
        if let Some(old) = self.child(parent, name) {
            let old_is_dir = matches!(self.tree.nodes[old.node].kind, Kind::Dir(_));
            if old_is_dir && matches!(new, New::Dir) {
                // A directory over a directory merges: lower children stay visible.
                self.tree.nodes[old.node].meta = meta;
                self.set_child(parent, name, old.node, layer);
                return Ok(());
            }
        }

        let node = match new {
            New::Hardlink(target) => {
                let target_node = self.resolve_hardlink(&target, layer)?;
                if let Kind::Dir(_) = self.tree.nodes[target_node].kind {
                    return Err(EntryError::HardlinkToDir(lossy(&target)));
                }
                let names = self.link_names.entry(target_node).or_insert(1);
                *names += 1;
                if *names > LINK_MAX {
                    return Err(EntryError::TooManyLinks);
                }
                // A hardlink entry's own metadata is that of its target.
                target_node
            }
            New::Dir => self.push(meta, Kind::Dir(BTreeMap::new())),
            New::File { size: stored } => {
                let size = match &sparse {
                    Some(s) => s.real_size,
                    None => stored,
                };
                // ext4 with 4 KiB blocks addresses 2^32 blocks per file.
                let limit = self.opts.max_file_size.min((1 << 44) - BLOCK_SIZE);
                if size > limit {
                    return Err(EntryError::FileTooLarge { size, limit });
                }
                self.total_data = self.total_data.saturating_add(stored);
                if self.total_data > self.opts.max_total_size {
                    return Err(EntryError::TotalTooLarge {
                        limit: self.opts.max_total_size,
                    });
                }
                self.stream.in_data.set(true);
                let extents = match sparse {
                    None => self.stream_file(entry, size),
                    Some(s) => self.stream_sparse(entry, stored, s),
                };
                self.stream.in_data.set(false);
                let extents = extents?;
                self.push(meta, Kind::File { size, extents })
            }
            New::Symlink(target) => {
                check_symlink(&target)?;
                self.push(meta, Kind::Symlink(target))
            }
            New::CharDev { major, minor } => self.push(meta, Kind::CharDev { major, minor }),
            New::BlockDev { major, minor } => self.push(meta, Kind::BlockDev { major, minor }),
            New::Fifo => self.push(meta, Kind::Fifo),
        };
        self.set_child(parent, name, node, layer);
        Ok(())
    }

    /// Every node of the tree counts, listed or implied by a path: the tree is what the
    /// limit keeps in memory.
    fn count_entry(&mut self) -> Result<(), EntryError> {
        self.entries += 1;
        if self.entries > self.opts.max_entries {
            return Err(EntryError::TooManyEntries {
                limit: self.opts.max_entries,
            });
        }
        Ok(())
    }

    fn push(&mut self, meta: Meta, kind: Kind) -> NodeId {
        self.tree.nodes.push(Node { meta, kind });
        self.tree.nodes.len() - 1
    }

    fn child(&self, dir: NodeId, name: &[u8]) -> Option<Child> {
        match &self.tree.nodes[dir].kind {
            Kind::Dir(children) => children.get(name).copied(),
            _ => None,
        }
    }

    fn set_child(&mut self, dir: NodeId, name: &[u8], node: NodeId, layer: usize) {
        if let Kind::Dir(children) = &mut self.tree.nodes[dir].kind {
            children.insert(
                name.to_vec(),
                Child {
                    node,
                    layer,
                    touched: layer,
                },
            );
        }
    }

    /// Walks to the directory at `path`, never through a symlink; with `create` (the walk
    /// of an entry this layer writes), missing directories are made (tars may list `a/b`
    /// without `a/`) and existing ones are marked as touched by this layer.
    fn walk(&mut self, path: &[Vec<u8>], layer: usize, create: bool) -> Result<NodeId, EntryError> {
        let mut dir = ROOT;
        for (i, name) in path.iter().enumerate() {
            dir = match self.child(dir, name) {
                Some(child) => match self.tree.nodes[child.node].kind {
                    Kind::Dir(_) => {
                        if create {
                            if let Kind::Dir(children) = &mut self.tree.nodes[dir].kind {
                                if let Some(c) = children.get_mut(name.as_slice()) {
                                    c.touched = layer;
                                }
                            }
                        }
                        child.node
                    }
                    Kind::Symlink(_) => {
                        return Err(EntryError::ThroughSymlink(lossy(&path[..=i].join(&b'/'))))
                    }
                    _ => return Err(EntryError::NotADirectory(lossy(&path[..=i].join(&b'/')))),
                },
                None if create => {
                    self.count_entry()?;
                    let node = self.push(Meta::implicit_dir(), Kind::Dir(BTreeMap::new()));
                    self.set_child(dir, name, node, layer);
                    node
                }
                None => return Err(EntryError::NotADirectory(lossy(&path[..=i].join(&b'/')))),
            };
        }
        Ok(dir)
    }

    fn resolve_hardlink(&mut self, target: &[u8], layer: usize) -> Result<NodeId, EntryError> {
        let components = normalize(target).map_err(|e| match e {
            EntryError::DotDotEscape => EntryError::HardlinkOutside(lossy(target)),
            other => other,
        })?;
        let Some((name, parent)) = components.split_last() else {
            return Err(EntryError::HardlinkToDir(lossy(target)));
        };
        let dir = self.walk(parent, layer, false).map_err(|e| match e {
            EntryError::NotADirectory(_) => EntryError::HardlinkMissing(lossy(target)),
            other => other,
        })?;
        self.child(dir, name)
            .map(|c| c.node)
            .ok_or_else(|| EntryError::HardlinkMissing(lossy(target)))
    }

    /// Drops every name below `dir` that a lower layer wrote; names of this layer stay, and
    /// directories this layer re-declared lose their lower content too. A lower directory
    /// this layer only passed through stays as the directory its paths imply.
    fn make_opaque(&mut self, dir: NodeId, layer: usize) {
        let mut stack = vec![dir];
        let mut implied = Vec::new();
        while let Some(dir) = stack.pop() {
            let Kind::Dir(children) = &mut self.tree.nodes[dir].kind else {
                continue;
            };
            children.retain(|_, c| c.touched >= layer);
            for c in children.values_mut() {
                if c.layer < layer {
                    c.layer = layer;
                    implied.push(c.node);
                }
                stack.push(c.node);
            }
        }
        for node in implied {
            self.tree.nodes[node].meta = Meta::implicit_dir();
        }
    }

    /// Copies a file's contents into the data area; all-zero blocks become holes.
    fn stream_file(&mut self, entry: &mut impl Read, size: u64) -> Result<Vec<Extent>, EntryError> {
        let mut sink = FileSink::new(&mut self.data);
        let mut got: u64 = 0;
        while got < size {
            let want = (size - got).min(self.buf.len() as u64) as usize;
            let n = read_full(entry, &mut self.buf[..want]).map_err(EntryError::Read)?;
            if n == 0 {
                return Err(EntryError::Truncated { got, size });
            }
            sink.write_at(got, &self.buf[..n])
                .map_err(EntryError::Write)?;
            got += n as u64;
        }
        sink.finish().map_err(EntryError::Write)
    }

    /// A PAX sparse file: only the mapped chunks are stored (format 1.0 puts the map at the
    /// start of the data); the gaps become holes without ever being read.
    fn stream_sparse(
        &mut self,
        entry: &mut impl Read,
        stored: u64,
        sparse: Sparse,
    ) -> Result<Vec<Extent>, EntryError> {
        let mut consumed = 0u64;
        let map = if sparse.map_in_data {
            read_sparse_map(entry, &mut consumed)?
        } else {
            sparse.map
        };
        let mut end = 0u64;
        let mut data_len = 0u64;
        for &(offset, len) in &map {
            let chunk_end = offset.checked_add(len);
            if offset < end || chunk_end.is_none_or(|e| e > sparse.real_size) {
                return Err(EntryError::BadHeader(
                    "sparse map out of order or out of range".into(),
                ));
            }
            end = offset + len;
            data_len += len;
        }
        if consumed + data_len != stored {
            return Err(EntryError::BadHeader(format!(
                "sparse map covers {data_len} bytes but the entry stores {}",
                stored.saturating_sub(consumed)
            )));
        }
        let mut sink = FileSink::new(&mut self.data);
        for (offset, len) in map {
            let mut done = 0u64;
            while done < len {
                let want = (len - done).min(self.buf.len() as u64) as usize;
                let n = read_full(entry, &mut self.buf[..want]).map_err(EntryError::Read)?;
                if n == 0 {
                    return Err(EntryError::Truncated {
                        got: consumed,
                        size: stored,
                    });
                }
                sink.write_at(offset + done, &self.buf[..n])
                    .map_err(EntryError::Write)?;
                done += n as u64;
                consumed += n as u64;
            }
        }
        sink.finish().map_err(EntryError::Write)
    }
}

/// Places one file's bytes, given in increasing offsets, into data blocks: each block is
/// assembled in `pending` and written when complete, unless it is all zero (a hole).
struct FileSink<'a> {
    data: &'a mut DataArea,
    extents: Vec<Extent>,
    /// Logical block held in `pending`.
    block: u64,
    dirty: bool,
}

impl<'a> FileSink<'a> {
    fn new(data: &'a mut DataArea) -> Self {
        Self {
            data,
            extents: Vec::new(),
            block: 0,
            dirty: false,
        }
    }

    fn write_at(&mut self, mut offset: u64, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let block = offset / BLOCK_SIZE;
            if block != self.block {
                self.flush()?;
                self.block = block;
            }
            let within = (offset % BLOCK_SIZE) as usize;
            let n = (BLOCK_SIZE as usize - within).min(bytes.len());
            self.data.pending[within..within + n].copy_from_slice(&bytes[..n]);
            self.dirty = true;
            offset += n as u64;
            bytes = &bytes[n..];
            if within + n == BLOCK_SIZE as usize {
                self.flush()?;
                self.block = block + 1;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        self.dirty = false;
        if is_zero(&self.data.pending) {
            return Ok(());
        }
        let physical = self.data.next_block;
        self.data.next_block += 1;
        self.data.out.write_all(&self.data.pending)?;
        self.data.pending.fill(0);
        let logical = self.block as u32;
        match self.extents.last_mut() {
            Some(e)
                if e.logical + e.len == logical
                    && e.start + u64::from(e.len) == physical
                    && e.len < MAX_EXTENT_LEN =>
            {
                e.len += 1
            }
            _ => self.extents.push(Extent {
                logical,
                start: physical,
                len: 1,
            }),
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<Vec<Extent>> {
        self.flush()?;
        Ok(self.extents)
    }
}

/// What a PAX header says beyond the ustar fields hk uses.
struct Pax {
    mtime: Option<(i64, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse: Option<Sparse>,
}

/// GNU tar's PAX sparse formats: 0.0 (offset/numbytes records), 0.1 (one `map` record) and
/// 1.0 (the map in the data).
#[derive(Clone)]
struct Sparse {
    name: Option<Vec<u8>>,
    real_size: u64,
    map: Vec<(u64, u64)>,
    map_in_data: bool,
}

fn read_pax<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Pax, EntryError> {
    let bad = |e: io::Error| EntryError::BadHeader(e.to_string());
    let bad_sparse = || EntryError::BadHeader("bad GNU.sparse record".into());
    let mut pax = Pax {
        mtime: None,
        xattrs: Vec::new(),
        sparse: None,
    };
    let Some(exts) = entry.pax_extensions().map_err(bad)? else {
        return Ok(pax);
    };
    let mut real_size = None;
    let mut name = None;
    let mut map = Vec::new();
    let mut offset = None;
    let mut map_in_data = false;
    let mut is_sparse = false;
    for ext in exts {
        let ext = ext.map_err(bad)?;
        let (key, value) = (ext.key_bytes(), ext.value_bytes());
        let number = || -> Result<u64, EntryError> {
            std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(bad_sparse)
        };
        if key == b"mtime" {
            pax.mtime = Some(
                parse_pax_time(value)
                    .ok_or_else(|| EntryError::BadHeader("bad PAX mtime".into()))?,
            );
        } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            pax.xattrs.push((name.to_vec(), value.to_vec()));
        } else if let Some(field) = key.strip_prefix(b"GNU.sparse.") {
            is_sparse = true;
            match field {
                b"name" => name = Some(value.to_vec()),
                b"realsize" | b"size" => real_size = Some(number()?),
                b"major" => map_in_data = number()? == 1,
                b"offset" => offset = Some(number()?),
                b"numbytes" => map.push((offset.take().ok_or_else(bad_sparse)?, number()?)),
                b"map" => {
                    let nums: Vec<u64> = std::str::from_utf8(value)
                        .map_err(|_| bad_sparse())?
                        .split(',')
                        .map(|n| n.parse().map_err(|_| bad_sparse()))
                        .collect::<Result<_, _>>()?;
                    let pairs = nums.chunks_exact(2);
                    if !pairs.remainder().is_empty() {
                        return Err(bad_sparse());
                    }
                    map.extend(pairs.map(|c| (c[0], c[1])));
                }
                _ => {}
            }
        }
    }
    if is_sparse {
        pax.sparse = Some(Sparse {
            name,
            real_size: real_size
                .ok_or_else(|| EntryError::BadHeader("sparse file without a real size".into()))?,
            map,
            map_in_data,
        });
    }
    Ok(pax)
}

/// The 1.0 map: decimal numbers, one per line (the count, then offset/size pairs), padded to
/// a 512-byte boundary.
fn read_sparse_map(
    entry: &mut impl Read,
    consumed: &mut u64,
) -> Result<Vec<(u64, u64)>, EntryError> {
    let mut number = || -> Result<u64, EntryError> {
        let mut digits = Vec::new();
        loop {
            let mut byte = [0u8];
            if read_full(entry, &mut byte).map_err(EntryError::Read)? == 0 {
                return Err(EntryError::Truncated {
                    got: *consumed,
                    size: *consumed + 1,
                });
            }
            *consumed += 1;
            match byte[0] {
                b'\n' => break,
                d @ b'0'..=b'9' if digits.len() < 20 => digits.push(d),
                _ => return Err(EntryError::BadHeader("bad sparse map".into())),
            }
        }
        std::str::from_utf8(&digits)
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| EntryError::BadHeader("bad sparse map".into()))
    };
    let count = number()?;
    // Each pair takes at least four bytes of map: a bound that keeps a forged count from
    // allocating.
    if count > 1 << 24 {
        return Err(EntryError::BadHeader("sparse map too long".into()));
    }
    let mut map = Vec::with_capacity(count as usize);
    for _ in 0..count {
        map.push((number()?, number()?));
    }
    let pad = consumed.next_multiple_of(512) - *consumed;
    let mut skip = vec![0u8; pad as usize];
    if read_full(entry, &mut skip).map_err(EntryError::Read)? != skip.len() {
        return Err(EntryError::Truncated {
            got: *consumed,
            size: *consumed + pad,
        });
    }
    *consumed += pad;
    Ok(map)
}

fn entry_error(layer: &str, path: &[u8], kind: EntryError) -> Error {
    Error::Entry {
        layer: layer.to_string(),
        path: lossy(path),
        kind,
    }
}

pub(super) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Splits a tar path into components: `.` and empty components vanish, `..` pops (and may not
/// climb above the root). A leading `/` is one more empty component: Docker reads an
/// absolute name as the same place in the layer.
fn normalize(path: &[u8]) -> Result<Vec<Vec<u8>>, EntryError> {
    if path.len() > MAX_PATH {
        return Err(EntryError::PathTooLong { limit: MAX_PATH });
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                out.pop().ok_or(EntryError::DotDotEscape)?;
            }
            name if name.len() > MAX_NAME => return Err(EntryError::NameTooLong),
            // Only a PAX path can carry one; no filesystem name may.
            name if name.contains(&0) => return Err(EntryError::NulInPath),
            name => out.push(name.to_vec()),
        }
    }
    if out.len() > MAX_DEPTH {
        return Err(EntryError::PathTooDeep { limit: MAX_DEPTH });
    }
    Ok(out)
}

/// Targets are kept as written: they resolve inside the guest, where `..` stops at the root,
/// so only what ext4 and the kernel cannot store is refused.
fn check_symlink(target: &[u8]) -> Result<(), EntryError> {
    if target.is_empty() {
        return Err(EntryError::BadSymlink("empty target"));
    }
    if target.len() > MAX_SYMLINK {
        return Err(EntryError::BadSymlink("target longer than 4095 bytes"));
    }
    if target.contains(&0) {
        return Err(EntryError::BadSymlink("NUL byte in target"));
    }
    Ok(())
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>) -> Result<Vec<u8>, EntryError> {
    entry
        .link_name_bytes()
        .map(|l| l.into_owned())
        .ok_or_else(|| EntryError::BadHeader("link without a target".into()))
}

fn device(header: &tar::Header) -> Result<(u32, u32), EntryError> {
    let bad = |e: io::Error| EntryError::BadHeader(e.to_string());
    let major = header.device_major().map_err(bad)?.unwrap_or(0);
    let minor = header.device_minor().map_err(bad)?.unwrap_or(0);
    // Linux's dev_t: 12 bits of major, 20 of minor.
    if major >= 1 << 12 || minor >= 1 << 20 {
        return Err(EntryError::BadHeader(format!(
            "device {major}:{minor} out of range"
        )));
    }
    Ok((major, minor))
}

/// The entry's metadata, and the attributes left out because ext4 cannot hold them.
fn read_meta(header: &tar::Header, pax: Pax) -> Result<(Meta, Dropped), EntryError> {
    let bad = |e: io::Error| EntryError::BadHeader(e.to_string());
    let perm = (header.mode().map_err(bad)? & 0o7777) as u16;
    let uid = u32::try_from(header.uid().map_err(bad)?)
        .map_err(|_| EntryError::BadHeader("uid beyond 32 bits".into()))?;
    let gid = u32::try_from(header.gid().map_err(bad)?)
        .map_err(|_| EntryError::BadHeader("gid beyond 32 bits".into()))?;
    let (mtime, mtime_nsec) = match pax.mtime {
        Some(t) => t,
        None => (
            i64::try_from(header.mtime().map_err(bad)?).unwrap_or(i64::MAX),
            0,
        ),
    };
    let (xattrs, dropped) = super::disk::fit_xattrs(pax.xattrs);
    let meta = Meta {
        perm,
        uid,
        gid,
        mtime,
        mtime_nsec,
        xattrs,
    };
    Ok((meta, dropped))
}

/// PAX times are decimal seconds with an optional fraction, possibly negative.
fn parse_pax_time(value: &[u8]) -> Option<(i64, u32)> {
    let text = std::str::from_utf8(value).ok()?;
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = int.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits = frac.as_bytes()[..frac.len().min(9)].to_vec();
    digits.resize(9, b'0');
    let mut nsec: u32 = std::str::from_utf8(&digits).ok()?.parse().ok()?;
    if int.starts_with('-') && nsec > 0 {
        // -1.25 is 1.25 s before the epoch: -2 s plus 0.75 s.
        return Some((secs - 1, 1_000_000_000 - nsec));
    }
    if nsec >= 1_000_000_000 {
        nsec = 999_999_999;
    }
    Some((secs, nsec))
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(m) => n += m,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn is_zero(block: &[u8]) -> bool {
    // OR-folding fixed chunks vectorizes; `iter().all` would test byte by byte.
    block
        .chunks_exact(64)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_paths() {
        assert_eq!(
            normalize(b"./a//b/./c/").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(normalize(b"a/../b").unwrap(), vec![b"b".to_vec()]);
        assert!(normalize(b"./").unwrap().is_empty());
        assert_eq!(normalize(b"//etc/").unwrap(), vec![b"etc".to_vec()]);
        assert!(matches!(
            normalize(b"a/../../x"),
            Err(EntryError::DotDotEscape)
        ));
        assert!(matches!(
            normalize(&[b'a'; 256]),
            Err(EntryError::NameTooLong)
        ));
    }

    #[test]
    fn symlink_targets() {
        assert!(check_symlink(b"/bin/busybox").is_ok());
        assert!(check_symlink(b"../../x").is_ok());
        assert!(check_symlink(b"").is_err());
        assert!(check_symlink(b"a\0b").is_err());
        assert!(check_symlink(&[b'a'; 4096]).is_err());
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(
            parse_pax_time(b"1700000000.123456789123"),
            Some((1_700_000_000, 123_456_789))
        );
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"x"), None);
    }
}
