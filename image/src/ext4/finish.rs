//! After the last layer: numbers the inodes, writes directories, long symlinks, xattr and
//! extent-tree blocks after the file data, lays out the block groups, and writes bitmaps,
//! inode tables, group descriptors and the superblock.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;

use super::disk::*;
use super::tree::{Child, DataArea, Kind, Meta, Node, NodeId, Tree, ROOT};
use super::{Inodes, Options, Size, Stats};

pub(super) enum Error {
    Io(io::Error),
    TooBig { needed: u64, limit: u64 },
    TooManyInodes { needed: u64, limit: u64 },
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// Appends whole blocks after the data area.
struct MetaWriter<'a> {
    out: &'a mut BufWriter<File>,
    next: u64,
}

impl MetaWriter<'_> {
    fn put(&mut self, blocks: &[u8]) -> io::Result<u64> {
        debug_assert_eq!(blocks.len() % BLOCK_SIZE as usize, 0);
        self.out.write_all(blocks)?;
        let start = self.next;
        self.next += (blocks.len() as u64) / BLOCK_SIZE;
        Ok(start)
    }
}

/// A growable set of block numbers.
struct Bitmap(Vec<u8>);

impl Bitmap {
    fn set_range(&mut self, start: u64, len: u64) {
        let end = start + len;
        if self.0.len() * 8 < end as usize {
            self.0.resize((end as usize).div_ceil(8), 0);
        }
        for bit in start..end {
            self.0[(bit / 8) as usize] |= 1 << (bit % 8);
        }
    }
}

fn ceil_div(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

pub(super) fn write(
    mut tree: Tree,
    data: DataArea,
    file: &File,
    opts: &Options,
    names: &[String],
) -> Result<Stats, Error> {
    let lost_found = ensure_lost_found(&mut tree);
    let uuid = uuid(names);
    let hash_seed: [u32; 4] =
        std::array::from_fn(|i| u32::from_le_bytes(uuid[4 * i..4 * i + 4].try_into().unwrap()));
    let nodes = &tree.nodes;
    let numbers = Numbering::new(nodes, lost_found);
    let last_ino = numbers.last_ino();

    let mut out = data.out;
    let meta_start = data.next_block;
    let mut used = Bitmap(Vec::new());
    let mut stats = Stats::default();
    let mut meta = MetaWriter {
        out: &mut out,
        next: meta_start,
    };
    let inodes = encode_inodes(
        nodes, &numbers, &hash_seed, &mut meta, &mut used, &mut stats,
    )?;
    let meta_end = meta.next;
    used.set_range(meta_start, meta_end - meta_start);

    let Layout {
        groups,
        ipg,
        total,
        tables_end,
    } = Layout::new(meta_end, last_ino, opts)?;
    let gdt_blocks = ceil_div(groups * DESC_SIZE as u64, BLOCK_SIZE);
    used.set_range(0, 1 + gdt_blocks);
    used.set_range(meta_end, tables_end - meta_end);
    used.set_range(total, groups * BLOCKS_PER_GROUP - total);
    used.0.resize((groups * BLOCKS_PER_GROUP / 8) as usize, 0);

    // Block bitmaps, inode bitmaps, inode tables: sequential after the metadata.
    out.write_all(&used.0)?;
    let used_in_group = |g: u64| -> u64 {
        let first = g * ipg + 1;
        (u64::from(last_ino) + 1).saturating_sub(first).min(ipg)
    };
    for g in 0..groups {
        let mut bitmap = vec![0u8; BLOCK_SIZE as usize];
        let mut b = Bitmap(Vec::new());
        b.set_range(0, used_in_group(g));
        b.set_range(ipg, BLOCKS_PER_GROUP - ipg);
        bitmap.copy_from_slice(&b.0);
        out.write_all(&bitmap)?;
    }
    out.write_all(&inodes.itable)?;
    out.flush()?;
    file.set_len(total * BLOCK_SIZE)?;

    stats.unused_data_blocks = punch_unused(file, &used, meta_start)?;

    let mut dirs_in_group = vec![0u32; groups as usize];
    for ino in inodes.dir_inos {
        dirs_in_group[((u64::from(ino) - 1) / ipg) as usize] += 1;
    }
    let mut gdt = vec![0u8; (gdt_blocks * BLOCK_SIZE) as usize];
    let mut free_blocks_total = 0;
    for g in 0..groups {
        let group_blocks = &used.0[(g * BLOCKS_PER_GROUP / 8) as usize..][..BLOCK_SIZE as usize];
        let free = group_blocks.iter().map(|b| b.count_zeros()).sum::<u32>();
        free_blocks_total += u64::from(free);
        let table_blocks = ipg / u64::from(INODES_PER_BLOCK);
        encode_group(
            &mut gdt[g as usize * DESC_SIZE..],
            &GroupFields {
                block_bitmap: meta_end + g,
                inode_bitmap: meta_end + groups + g,
                inode_table: meta_end + 2 * groups + g * table_blocks,
                free_blocks: free,
                free_inodes: (ipg - used_in_group(g)) as u32,
                dirs: dirs_in_group[g as usize],
            },
        );
    }
    file.write_all_at(&gdt, BLOCK_SIZE)?;
    let inode_count = (groups * ipg) as u32;
    let sb = encode_superblock(&SuperFields {
        blocks: total,
        free_blocks: free_blocks_total,
        inodes: inode_count,
        free_inodes: inode_count - last_ino,
        inodes_per_group: ipg as u32,
        uuid,
        hash_seed,
        label: opts.label.as_bytes(),
    });
    file.write_all_at(&sb, 1024)?;

    stats.used_blocks = total - free_blocks_total;
    stats.image_bytes = total * BLOCK_SIZE;
    stats.inodes = last_ino;
    Ok(stats)
}

/// Inode numbers and link counts of every reachable node.
struct Numbering {
    ino_of: Vec<u32>,
    links: Vec<u32>,
    parent_of: Vec<u32>,
    /// Node of each inode number; `None` for the reserved ones.
    by_ino: Vec<Option<NodeId>>,
}

impl Numbering {
    /// Breadth first from the root, so a directory's entries sit close in the inode table;
    /// nodes no name reaches (replaced or whited out) get no inode.
    fn new(nodes: &[Node], lost_found: NodeId) -> Self {
        let mut ino_of = vec![0u32; nodes.len()];
        let mut links = vec![0u32; nodes.len()];
        let mut parent_of = vec![0u32; nodes.len()];
        let mut by_ino: Vec<Option<NodeId>> = vec![None; FIRST_INO as usize + 1];
        ino_of[ROOT] = ROOT_INO;
        by_ino[ROOT_INO as usize] = Some(ROOT);
        ino_of[lost_found] = LOST_FOUND_INO;
        by_ino[LOST_FOUND_INO as usize] = Some(lost_found);
        parent_of[ROOT] = ROOT_INO;
        let mut queue = VecDeque::from([ROOT]);
        while let Some(dir) = queue.pop_front() {
            let Kind::Dir(children) = &nodes[dir].kind else {
                continue;
            };
            let mut subdirs = 0;
            for child in children.values() {
                links[child.node] += 1;
                if ino_of[child.node] == 0 {
                    ino_of[child.node] = by_ino.len() as u32;
                    by_ino.push(Some(child.node));
                }
                if let Kind::Dir(_) = nodes[child.node].kind {
                    subdirs += 1;
                    parent_of[child.node] = ino_of[dir];
                    queue.push_back(child.node);
                }
            }
            links[dir] = 2 + subdirs;
        }
        Self {
            ino_of,
            links,
            parent_of,
            by_ino,
        }
    }

    fn last_ino(&self) -> u32 {
        (self.by_ino.len() - 1) as u32
    }
}

/// The inode table (inodes 1..=last), the inode numbers of the directories, and, written
/// through `meta`, every block the inodes point to besides file data: directories, long
/// symlinks, xattr blocks, extent-tree blocks.
fn encode_inodes(
    nodes: &[Node],
    numbers: &Numbering,
    hash_seed: &[u32; 4],
    meta: &mut MetaWriter,
    used: &mut Bitmap,
    stats: &mut Stats,
) -> io::Result<EncodedInodes> {
    let Numbering {
        ino_of,
        links,
        parent_of,
        by_ino,
    } = numbers;
    let mut itable = vec![0u8; numbers.last_ino() as usize * INODE_SIZE];
    let mut dir_inos = Vec::new();
    for (ino, node) in by_ino.iter().enumerate() {
        let Some(node) = *node else { continue };
        let n = &nodes[node];
        let slot = &mut itable[(ino - 1) * INODE_SIZE..ino * INODE_SIZE];
        let ino = ino as u32;
        let mut i_block = [0u8; 60];
        let mut flags = EXTENTS_FL;
        let mut sectors = 0u64;
        let (mode, size) = match &n.kind {
            Kind::Dir(children) => {
                dir_inos.push(ino);
                stats.dirs += 1;
                let entries: Vec<(u32, u8, &[u8])> = children
                    .iter()
                    .map(|(name, c)| (ino_of[c.node], file_type(&nodes[c.node]), name.as_slice()))
                    .collect();
                let mut p = DirPacker::new();
                p.add(ino, FT_DIR, b".");
                p.add(parent_of[node], FT_DIR, b"..");
                for &(child, ft, name) in &entries {
                    p.add(child, ft, name);
                }
                let mut bytes = p.finish();
                // Past one block, index it as the kernel would.
                if bytes.len() > BLOCK_SIZE as usize {
                    if let Some(tree) = htree_dir(ino, parent_of[node], &entries, hash_seed) {
                        bytes = tree;
                        flags |= INDEX_FL;
                    }
                }
                let count = bytes.len() as u64 / BLOCK_SIZE;
                let start = meta.put(&bytes)?;
                let (root, tree_blocks) = extent_tree(&contiguous(start, count), meta)?;
                i_block = root;
                sectors = (count + tree_blocks) * 8;
                (S_IFDIR, count * BLOCK_SIZE)
            }
            Kind::File { size, extents } => {
                stats.files += 1;
                stats.file_bytes += size;
                stats.hardlinks += u64::from(links[node] - 1);
                let mut data_blocks = 0;
                for e in extents {
                    used.set_range(e.start, u64::from(e.len));
                    data_blocks += u64::from(e.len);
                }
                let (root, tree_blocks) = extent_tree(extents, meta)?;
                i_block = root;
                sectors = (data_blocks + tree_blocks) * 8;
                (S_IFREG, *size)
            }
            Kind::Symlink(target) => {
                stats.symlinks += 1;
                stats.hardlinks += u64::from(links[node] - 1);
                // Shorter than i_block: a "fast" symlink stored in the inode itself.
                if target.len() < 60 {
                    i_block[..target.len()].copy_from_slice(target);
                    flags = 0;
                } else {
                    let mut block = vec![0u8; BLOCK_SIZE as usize];
                    block[..target.len()].copy_from_slice(target);
                    let start = meta.put(&block)?;
                    let (root, _) = extent_tree(&contiguous(start, 1), meta)?;
                    i_block = root;
                    sectors = 8;
                }
                (S_IFLNK, target.len() as u64)
            }
            Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
                stats.specials += 1;
                stats.hardlinks += u64::from(links[node] - 1);
                i_block = encode_device(*major, *minor);
                flags = 0;
                let mode = if matches!(n.kind, Kind::CharDev { .. }) {
                    S_IFCHR
                } else {
                    S_IFBLK
                };
                (mode, 0)
            }
            Kind::Fifo => {
                stats.specials += 1;
                stats.hardlinks += u64::from(links[node] - 1);
                flags = 0;
                (S_IFIFO, 0)
            }
        };
        let mut xattr_block = 0;
        let xattrs = encode_xattrs(&n.meta.xattrs);
        let inline: &[u8] = match &xattrs {
            XattrPlace::None => &[],
            XattrPlace::Inline(bytes) => bytes,
            XattrPlace::Block(block) => {
                xattr_block = meta.put(block)?;
                sectors += 8;
                &[]
            }
        };
        let links = if links[node] > LINK_MAX {
            1
        } else {
            links[node]
        };
        encode_inode(
            slot,
            &InodeFields {
                mode: mode | n.meta.perm,
                uid: n.meta.uid,
                gid: n.meta.gid,
                size,
                links: links as u16,
                mtime: n.meta.mtime,
                mtime_nsec: n.meta.mtime_nsec,
                sectors,
                flags,
                i_block: &i_block,
                xattr_block,
                inline_xattrs: inline,
            },
        );
    }
    Ok(EncodedInodes { itable, dir_inos })
}

struct EncodedInodes {
    itable: Vec<u8>,
    dir_inos: Vec<u32>,
}

/// Where the group metadata goes and how big the filesystem is.
struct Layout {
    groups: u64,
    /// Inodes per group.
    ipg: u64,
    /// Blocks in the filesystem.
    total: u64,
    /// End of the inode tables: everything after is free.
    tables_end: u64,
}

impl Layout {
    /// Bitmaps and inode tables follow the metadata (flex_bg lets them live outside their
    /// group). With a fixed size the group count follows from it; otherwise the tables' size
    /// depends on the group count, which depends on the total size: iterate to the fixed point.
    fn new(meta_end: u64, last_ino: u32, opts: &Options) -> Result<Self, Error> {
        let want_inodes = match opts.inodes {
            Inodes::Auto { headroom_percent } => {
                u64::from(last_ino) + u64::from(last_ino) * u64::from(headroom_percent) / 100
            }
            Inodes::Fixed { count } => u64::from(count).max(u64::from(last_ino)),
        };
        let max_groups = GDT_RESERVED_BLOCKS * BLOCK_SIZE / DESC_SIZE as u64;
        let limit = (max_groups * BLOCKS_PER_GROUP).min(u64::from(u32::MAX));
        let ipg_for = |groups: u64| {
            ceil_div(want_inodes, groups).next_multiple_of(u64::from(INODES_PER_BLOCK))
        };
        let tables_end_for =
            |groups: u64, ipg: u64| meta_end + groups * (2 + ipg / u64::from(INODES_PER_BLOCK));
        let check_limit = |total: u64, groups: u64| {
            if total > limit || groups > max_groups {
                return Err(Error::TooBig {
                    needed: total,
                    limit,
                });
            }
            Ok(())
        };

        let headroom_percent = match opts.size {
            Size::Auto { headroom_percent } => headroom_percent,
            Size::Fixed { bytes } => {
                let total = bytes / BLOCK_SIZE;
                let groups = ceil_div(total, BLOCKS_PER_GROUP).max(1);
                check_limit(total, groups)?;
                // An inode bitmap is one block: a group holds at most one inode per bit.
                if want_inodes > groups * BLOCKS_PER_GROUP {
                    return Err(Error::TooManyInodes {
                        needed: want_inodes,
                        limit: groups * BLOCKS_PER_GROUP,
                    });
                }
                let ipg = ipg_for(groups);
                let tables_end = tables_end_for(groups, ipg);
                if total < tables_end {
                    return Err(Error::TooBig {
                        needed: tables_end,
                        limit: total,
                    });
                }
                return Ok(Self {
                    groups,
                    ipg,
                    total,
                    tables_end,
                });
            }
        };
        let mut groups = ceil_div(meta_end, BLOCKS_PER_GROUP)
            .max(ceil_div(want_inodes, BLOCKS_PER_GROUP))
            .max(1);
        loop {
            let ipg = ipg_for(groups);
            let tables_end = tables_end_for(groups, ipg);
            let t = tables_end + tables_end * u64::from(headroom_percent) / 100;
            // Keep the last group from being a sliver of a few blocks.
            let total = t.max((ceil_div(t, BLOCKS_PER_GROUP) - 1) * BLOCKS_PER_GROUP + 1024);
            check_limit(total, groups)?;
            let need_groups = ceil_div(total, BLOCKS_PER_GROUP);
            if need_groups <= groups {
                // Fewer groups would shrink the tables and need more groups again: keep these
                // and grow the filesystem into the last one, so the loop only ever moves up.
                let total = total.max((groups - 1) * BLOCKS_PER_GROUP + 1024);
                return Ok(Self {
                    groups,
                    ipg,
                    total,
                    tables_end,
                });
            }
            groups = need_groups;
        }
    }
}

/// Data blocks no file references (written for files a later layer replaced or whited out)
/// are free in the filesystem; punching them out of the image file returns the space to the
/// host. Returns how many there were.
fn punch_unused(file: &File, used: &Bitmap, data_end: u64) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let is_used = |b: u64| used.0[(b / 8) as usize] & (1 << (b % 8)) != 0;
    let mut unused = 0;
    let mut block = FIRST_DATA_BLOCK;
    while block < data_end {
        if is_used(block) {
            block += 1;
            continue;
        }
        let start = block;
        while block < data_end && !is_used(block) {
            block += 1;
        }
        unused += block - start;
        // SAFETY: fallocate only reads its integer arguments; the fd is open for writing.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                (start * BLOCK_SIZE) as libc::off_t,
                ((block - start) * BLOCK_SIZE) as libc::off_t,
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            // Host filesystems without hole punching keep the bytes; the image is still valid.
            if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(err);
            }
        }
    }
    Ok(unused)
}

/// e2fsck insists on /lost+found; images rarely ship one.
fn ensure_lost_found(tree: &mut Tree) -> NodeId {
    let Kind::Dir(root) = &tree.nodes[ROOT].kind else {
        unreachable!("the root is always a directory")
    };
    if let Some(child) = root.get(b"lost+found".as_slice()) {
        if let Kind::Dir(_) = tree.nodes[child.node].kind {
            return child.node;
        }
    }
    tree.nodes.push(Node {
        meta: Meta {
            perm: 0o700,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: Vec::new(),
        },
        kind: Kind::Dir(BTreeMap::new()),
    });
    let node = tree.nodes.len() - 1;
    if let Kind::Dir(root) = &mut tree.nodes[ROOT].kind {
        root.insert(
            b"lost+found".to_vec(),
            Child {
                node,
                layer: 0,
                touched: 0,
            },
        );
    }
    node
}

fn file_type(n: &Node) -> u8 {
    match n.kind {
        Kind::Dir(_) => FT_DIR,
        Kind::File { .. } => FT_REG,
        Kind::Symlink(_) => FT_SYMLINK,
        Kind::CharDev { .. } => FT_CHR,
        Kind::BlockDev { .. } => FT_BLK,
        Kind::Fifo => FT_FIFO,
    }
}

fn contiguous(start: u64, count: u64) -> Vec<Extent> {
    (0..count)
        .step_by(MAX_EXTENT_LEN as usize)
        .map(|off| Extent {
            logical: off as u32,
            start: start + off,
            len: (count - off).min(u64::from(MAX_EXTENT_LEN)) as u32,
        })
        .collect()
}

/// The inode's i_block: up to four extents inline, else a tree of full leaf and index
/// blocks. Returns the tree blocks written, which count in i_blocks.
fn extent_tree(extents: &[Extent], meta: &mut MetaWriter) -> io::Result<([u8; 60], u64)> {
    let mut root = [0u8; 60];
    if extents.len() <= 4 {
        extent_header(&mut root, extents.len(), 4, 0);
        for (i, e) in extents.iter().enumerate() {
            extent_leaf(&mut root[12 + 12 * i..], e);
        }
        return Ok((root, 0));
    }
    let mut tree_blocks = 0;
    let mut level = Vec::new();
    for chunk in extents.chunks(EXTENTS_PER_BLOCK) {
        let mut block = vec![0u8; BLOCK_SIZE as usize];
        extent_header(&mut block, chunk.len(), EXTENTS_PER_BLOCK, 0);
        for (i, e) in chunk.iter().enumerate() {
            extent_leaf(&mut block[12 + 12 * i..], e);
        }
        level.push((chunk[0].logical, meta.put(&block)?));
        tree_blocks += 1;
    }
    let mut depth = 1;
    while level.len() > 4 {
        let mut next = Vec::new();
        for chunk in level.chunks(EXTENTS_PER_BLOCK) {
            let mut block = vec![0u8; BLOCK_SIZE as usize];
            extent_header(&mut block, chunk.len(), EXTENTS_PER_BLOCK, depth);
            for (i, (logical, child)) in chunk.iter().enumerate() {
                extent_index(&mut block[12 + 12 * i..], *logical, *child);
            }
            next.push((chunk[0].0, meta.put(&block)?));
            tree_blocks += 1;
        }
        level = next;
        depth += 1;
    }
    extent_header(&mut root, level.len(), 4, depth);
    for (i, (logical, child)) in level.iter().enumerate() {
        extent_index(&mut root[12 + 12 * i..], *logical, *child);
    }
    Ok((root, tree_blocks))
}

/// Derived from the layer names (diff_ids): the same stack gives the same image.
fn uuid(names: &[String]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, half) in out.chunks_mut(8).enumerate() {
        let mut h = DefaultHasher::new();
        (i, names).hash(&mut h);
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}
