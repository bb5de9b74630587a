//! The ext4 on-disk format: the structures the writer emits, encoded little-endian into byte
//! buffers (layouts from the kernel's fs/ext4/ext4.h, ext4_extents.h and xattr.h).

use std::collections::HashMap;

pub(super) const BLOCK_SIZE: u64 = 4096;
pub(super) const BLOCKS_PER_GROUP: u64 = BLOCK_SIZE * 8;
pub(super) const INODE_SIZE: usize = 256;
pub(super) const INODES_PER_BLOCK: u32 = (BLOCK_SIZE as usize / INODE_SIZE) as u32;
/// Bytes of the inode beyond the 128 of ext2: up to `i_projid`, so nanosecond and creation
/// times fit; the rest of the 256 holds inline xattrs.
const EXTRA_ISIZE: u16 = 32;
const XATTR_INLINE_OFFSET: usize = 128 + EXTRA_ISIZE as usize;
/// Group descriptors (32 bytes without the 64bit feature) fill blocks 1.. of group 0; this many
/// blocks are kept for them, enough for 2048 groups (256 GiB), before the data area begins.
pub(super) const GDT_RESERVED_BLOCKS: u64 = 16;
pub(super) const DESC_SIZE: usize = 32;
pub(super) const FIRST_DATA_BLOCK: u64 = 1 + GDT_RESERVED_BLOCKS;
/// The longest initialized extent.
pub(super) const MAX_EXTENT_LEN: u32 = 32768;
pub(super) const ROOT_INO: u32 = 2;
pub(super) const LOST_FOUND_INO: u32 = 11;
pub(super) const FIRST_INO: u32 = 11;
/// ext4 caps a file's hard links here; with dir_nlink, a directory with more subdirectories
/// reports 1.
pub(super) const LINK_MAX: u32 = 65000;

pub(super) const EXTENTS_FL: u32 = 0x80000;
/// A hashed-tree (htree) directory.
pub(super) const INDEX_FL: u32 = 0x1000;
const EXT_MAGIC: u16 = 0xF30A;
const XATTR_MAGIC: u32 = 0xEA02_0000;
/// Extent entries per tree block after the 12-byte header.
pub(super) const EXTENTS_PER_BLOCK: usize = (BLOCK_SIZE as usize - 12) / 12;

pub(super) const S_IFIFO: u16 = 0o010000;
pub(super) const S_IFCHR: u16 = 0o020000;
pub(super) const S_IFDIR: u16 = 0o040000;
pub(super) const S_IFBLK: u16 = 0o060000;
pub(super) const S_IFREG: u16 = 0o100000;
pub(super) const S_IFLNK: u16 = 0o120000;

/// Directory entry file types.
pub(super) const FT_REG: u8 = 1;
pub(super) const FT_DIR: u8 = 2;
pub(super) const FT_CHR: u8 = 3;
pub(super) const FT_BLK: u8 = 4;
pub(super) const FT_FIFO: u8 = 5;
pub(super) const FT_SYMLINK: u8 = 7;

/// A run of file blocks: `len` blocks from logical block `logical` live at `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Extent {
    pub logical: u32,
    pub start: u64,
    pub len: u32,
}

fn put16(buf: &mut [u8], off: usize, v: u16) {
    buf[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

pub(super) fn extent_header(buf: &mut [u8], entries: usize, max: usize, depth: u16) {
    put16(buf, 0, EXT_MAGIC);
    put16(buf, 2, entries as u16);
    put16(buf, 4, max as u16);
    put16(buf, 6, depth);
}

pub(super) fn extent_leaf(buf: &mut [u8], e: &Extent) {
    put32(buf, 0, e.logical);
    put16(buf, 4, e.len as u16);
    put16(buf, 6, (e.start >> 32) as u16);
    put32(buf, 8, e.start as u32);
}

pub(super) fn extent_index(buf: &mut [u8], logical: u32, block: u64) {
    put32(buf, 0, logical);
    put32(buf, 4, block as u32);
    put16(buf, 8, (block >> 32) as u16);
}

/// Everything an inode records, already laid out for `encode_inode`.
pub(super) struct InodeFields<'a> {
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub links: u16,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// In 512-byte sectors, as i_blocks counts without huge_file.
    pub sectors: u64,
    pub flags: u32,
    pub i_block: &'a [u8; 60],
    pub xattr_block: u64,
    /// The inline xattr area (magic included), or empty.
    pub inline_xattrs: &'a [u8],
}

/// ext4 keeps 32 bits of seconds plus two "epoch" bits in the extra field, reaching 2446.
fn encode_time(secs: i64, nsec: u32) -> (u32, u32) {
    let secs = secs.clamp(i32::MIN as i64, i32::MAX as i64 + 3 * (1i64 << 32));
    let epoch = ((secs - i64::from(secs as i32)) >> 32) as u32 & 3;
    (secs as u32, (nsec << 2) | epoch)
}

pub(super) fn encode_inode(buf: &mut [u8], f: &InodeFields) {
    put16(buf, 0x00, f.mode);
    put16(buf, 0x02, f.uid as u16);
    put32(buf, 0x04, f.size as u32);
    let (secs, extra) = encode_time(f.mtime, f.mtime_nsec);
    for (base, extra_off) in [(0x08, 0x8C), (0x0C, 0x84), (0x10, 0x88), (0x90, 0x94)] {
        put32(buf, base, secs);
        put32(buf, extra_off, extra);
    }
    put16(buf, 0x18, f.gid as u16);
    put16(buf, 0x1A, f.links);
    put32(buf, 0x1C, f.sectors as u32);
    put32(buf, 0x20, f.flags);
    buf[0x28..0x64].copy_from_slice(f.i_block);
    put32(buf, 0x68, f.xattr_block as u32);
    put32(buf, 0x6C, (f.size >> 32) as u32);
    put16(buf, 0x74, (f.sectors >> 32) as u16);
    put16(buf, 0x76, (f.xattr_block >> 32) as u16);
    put16(buf, 0x78, (f.uid >> 16) as u16);
    put16(buf, 0x7A, (f.gid >> 16) as u16);
    put16(buf, 0x80, EXTRA_ISIZE);
    buf[XATTR_INLINE_OFFSET..XATTR_INLINE_OFFSET + f.inline_xattrs.len()]
        .copy_from_slice(f.inline_xattrs);
}

/// Device numbers in i_block: the old 8:8 encoding when both fit, else the kernel's
/// new_encode_dev in the second word.
pub(super) fn encode_device(major: u32, minor: u32) -> [u8; 60] {
    let mut b = [0u8; 60];
    if major < 256 && minor < 256 {
        put32(&mut b, 0, (major << 8) | minor);
    } else {
        put32(
            &mut b,
            4,
            (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12),
        );
    }
    b
}

/// Packs directory entries into whole blocks; an entry never straddles a block, and the last
/// entry of each block stretches to its end.
pub(super) struct DirPacker {
    pub bytes: Vec<u8>,
    last: usize,
}

impl DirPacker {
    pub fn new() -> Self {
        Self {
            bytes: Vec::new(),
            last: 0,
        }
    }

    /// Appends an entry; true when it had to start a new block.
    pub fn add(&mut self, ino: u32, file_type: u8, name: &[u8]) -> bool {
        let len = (8 + name.len()).next_multiple_of(4);
        let bs = BLOCK_SIZE as usize;
        let new_block =
            self.bytes.len() + len > self.bytes.len().next_multiple_of(bs) || self.bytes.is_empty();
        if new_block {
            self.close_block();
        }
        let off = self.bytes.len();
        self.bytes.resize(off + len, 0);
        let e = &mut self.bytes[off..];
        put32(e, 0, ino);
        put16(e, 4, len as u16);
        e[6] = name.len() as u8;
        e[7] = file_type;
        e[8..8 + name.len()].copy_from_slice(name);
        self.last = off;
        new_block
    }

    /// Pads the current block by stretching its last entry.
    fn close_block(&mut self) {
        let end = self.bytes.len().next_multiple_of(BLOCK_SIZE as usize);
        if end > self.bytes.len() {
            let rec_len = end - self.last;
            put16(&mut self.bytes, self.last + 4, rec_len as u16);
            self.bytes.resize(end, 0);
        }
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.close_block();
        self.bytes
    }
}

/// dx_root_info.hash_version: half-MD4; with EXT2_FLAGS_UNSIGNED_HASH in the superblock,
/// names hash as unsigned bytes on every architecture.
const DX_HASH_HALF_MD4: u8 = 1;
/// dx entries in the root block (after "." / ".." and the 8-byte info) and in an index node
/// (after a fake empty entry).
const DX_ROOT_LIMIT: usize = (BLOCK_SIZE as usize - 32) / 8;
const DX_NODE_LIMIT: usize = (BLOCK_SIZE as usize - 8) / 8;

/// The kernel's half_md4_transform (fs/ext4/hash.c): MD4's three rounds over 8 words.
fn half_md4(buf: &mut [u32; 4], input: &[u32; 8]) {
    let f = |x: u32, y: u32, z: u32| z ^ (x & (y ^ z));
    let g = |x: u32, y: u32, z: u32| (x & y).wrapping_add((x ^ y) & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    const K2: u32 = 0o13240474631;
    const K3: u32 = 0o15666365641;
    let [mut a, mut b, mut c, mut d] = *buf;
    macro_rules! round {
        ($f:ident, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $s:expr) => {
            $a = $a
                .wrapping_add($f($b, $c, $d))
                .wrapping_add($x)
                .rotate_left($s)
        };
    }
    let i = input;
    round!(f, a, b, c, d, i[0], 3);
    round!(f, d, a, b, c, i[1], 7);
    round!(f, c, d, a, b, i[2], 11);
    round!(f, b, c, d, a, i[3], 19);
    round!(f, a, b, c, d, i[4], 3);
    round!(f, d, a, b, c, i[5], 7);
    round!(f, c, d, a, b, i[6], 11);
    round!(f, b, c, d, a, i[7], 19);
    round!(g, a, b, c, d, i[1].wrapping_add(K2), 3);
    round!(g, d, a, b, c, i[3].wrapping_add(K2), 5);
    round!(g, c, d, a, b, i[5].wrapping_add(K2), 9);
    round!(g, b, c, d, a, i[7].wrapping_add(K2), 13);
    round!(g, a, b, c, d, i[0].wrapping_add(K2), 3);
    round!(g, d, a, b, c, i[2].wrapping_add(K2), 5);
    round!(g, c, d, a, b, i[4].wrapping_add(K2), 9);
    round!(g, b, c, d, a, i[6].wrapping_add(K2), 13);
    round!(h, a, b, c, d, i[3].wrapping_add(K3), 3);
    round!(h, d, a, b, c, i[7].wrapping_add(K3), 9);
    round!(h, c, d, a, b, i[2].wrapping_add(K3), 11);
    round!(h, b, c, d, a, i[6].wrapping_add(K3), 15);
    round!(h, a, b, c, d, i[1].wrapping_add(K3), 3);
    round!(h, d, a, b, c, i[5].wrapping_add(K3), 9);
    round!(h, c, d, a, b, i[0].wrapping_add(K3), 11);
    round!(h, b, c, d, a, i[4].wrapping_add(K3), 15);
    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

/// The kernel's ext4fs_dirhash for DX_HASH_HALF_MD4_UNSIGNED: 32-byte chunks of the name
/// (big-endian words, padded with the length) through half-MD4, seeded by s_hash_seed.
pub(super) fn dx_hash(name: &[u8], seed: &[u32; 4]) -> u32 {
    let mut buf = if seed.iter().any(|&w| w != 0) {
        *seed
    } else {
        [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476]
    };
    let mut rest = name;
    let mut left = name.len() as u32;
    while !rest.is_empty() {
        let pad = (left | (left << 8)) | ((left | (left << 8)) << 16);
        let chunk = &rest[..rest.len().min(32)];
        let mut input = [pad; 8];
        let mut words = chunk.chunks_exact(4);
        let mut n = 0;
        for w in words.by_ref() {
            input[n] = u32::from_be_bytes([w[0], w[1], w[2], w[3]]);
            n += 1;
        }
        if n < 8 {
            input[n] = words
                .remainder()
                .iter()
                .fold(pad, |val, &byte| u32::from(byte).wrapping_add(val << 8));
        }
        half_md4(&mut buf, &input);
        rest = &rest[chunk.len()..];
        left = left.saturating_sub(32);
    }
    let hash = buf[1] & !1;
    if hash == 0x7fff_ffff << 1 {
        (0x7fff_ffff - 1) << 1
    } else {
        hash
    }
}

fn put_dx_entries(buf: &mut [u8], limit: usize, entries: &[(u32, u32)]) {
    put16(buf, 0, limit as u16);
    put16(buf, 2, entries.len() as u16);
    put32(buf, 4, entries[0].1);
    for (k, &(hash, block)) in entries[1..].iter().enumerate() {
        put32(buf, 8 + 8 * k, hash);
        put32(buf, 12 + 8 * k, block);
    }
}

/// A directory as an htree: a root block (".", "..", index), at most one level of index
/// nodes, then leaf blocks of ordinary entries sorted by name hash, so the kernel finds a
/// name by reading two or three blocks instead of scanning them all. `None` when even two
/// levels cannot index it (then it stays linear).
pub(super) fn htree_dir(
    ino: u32,
    parent: u32,
    entries: &[(u32, u8, &[u8])],
    seed: &[u32; 4],
) -> Option<Vec<u8>> {
    let mut order: Vec<(u32, usize)> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (dx_hash(e.2, seed), i))
        .collect();
    order.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| entries[a.1].2.cmp(entries[b.1].2))
    });
    let mut leaves = DirPacker::new();
    let mut starts: Vec<u32> = Vec::new();
    let mut prev = None;
    for &(hash, i) in &order {
        let (child, file_type, name) = entries[i];
        if leaves.add(child, file_type, name) {
            // A leaf that begins inside a run of equal hashes says so in its low bit, so a
            // lookup goes on into it.
            let collision = u32::from(prev == Some(hash));
            starts.push(if starts.is_empty() {
                0
            } else {
                hash | collision
            });
        }
        prev = Some(hash);
    }
    let leaves = leaves.finish();
    let nodes = if starts.len() <= DX_ROOT_LIMIT {
        0
    } else {
        starts.len().div_ceil(DX_NODE_LIMIT)
    };
    if nodes > DX_ROOT_LIMIT {
        return None;
    }
    let bs = BLOCK_SIZE as usize;
    let first_leaf = 1 + nodes as u32;
    let leaf_entries: Vec<(u32, u32)> = starts
        .iter()
        .enumerate()
        .map(|(j, &h)| (h, first_leaf + j as u32))
        .collect();
    let mut out = vec![0u8; (1 + nodes) * bs];
    put32(&mut out, 0, ino);
    put16(&mut out, 4, 12);
    out[6] = 1;
    out[7] = FT_DIR;
    out[8] = b'.';
    put32(&mut out, 12, parent);
    put16(&mut out, 16, (bs - 12) as u16);
    out[18] = 2;
    out[19] = FT_DIR;
    out[20..22].copy_from_slice(b"..");
    out[28] = DX_HASH_HALF_MD4;
    out[29] = 8; // info_length
    out[30] = u8::from(nodes > 0); // indirect_levels
    if nodes == 0 {
        put_dx_entries(&mut out[32..bs], DX_ROOT_LIMIT, &leaf_entries);
    } else {
        let mut root_entries = Vec::with_capacity(nodes);
        for (k, chunk) in leaf_entries.chunks(DX_NODE_LIMIT).enumerate() {
            let node = &mut out[(1 + k) * bs..(2 + k) * bs];
            put16(node, 4, bs as u16); // a fake empty entry spanning the block
            put_dx_entries(&mut node[8..], DX_NODE_LIMIT, chunk);
            root_entries.push((chunk[0].0, 1 + k as u32));
        }
        put_dx_entries(&mut out[32..bs], DX_ROOT_LIMIT, &root_entries);
    }
    out.extend_from_slice(&leaves);
    Some(out)
}

/// Attribute name prefixes and their on-disk index (the kernel's xattr handlers).
const XATTR_PREFIXES: [(&[u8], u8); 3] = [(b"user.", 1), (b"trusted.", 4), (b"security.", 6)];
const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

/// One attribute as stored: index, name without its prefix, value.
struct Stored<'a> {
    index: u8,
    name: &'a [u8],
    value: Vec<u8>,
}

/// Full names (`user.foo`) and values, as the tar's `SCHILY.xattr.` records carry them.
pub(super) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Extended attributes (name, reason) left out of one entry.
pub(super) type Dropped = Vec<(Vec<u8>, &'static str)>;

/// One attribute in its stored form, or why ext4 cannot hold it.
fn store<'a>(name: &'a [u8], value: &[u8]) -> Result<Stored<'a>, &'static str> {
    let (index, short, value) = if name == ACL_ACCESS || name == ACL_DEFAULT {
        let index = if name == ACL_ACCESS { 2 } else { 3 };
        (
            index,
            &name[..0],
            acl_to_disk(value).ok_or("malformed POSIX ACL")?,
        )
    } else {
        let (prefix, index) = XATTR_PREFIXES
            .iter()
            .find(|(p, _)| name.starts_with(p))
            .ok_or("namespace not supported by ext4")?;
        (*index, &name[prefix.len()..], value.to_vec())
    };
    if short.len() > 255 {
        return Err("name longer than 255 bytes");
    }
    if index != 2 && index != 3 && short.is_empty() {
        return Err("empty name");
    }
    Ok(Stored {
        index,
        name: short,
        value,
    })
}

fn stored(xattrs: &[(Vec<u8>, Vec<u8>)]) -> Vec<Stored<'_>> {
    let mut out: Vec<Stored> = xattrs
        .iter()
        .map(|(name, value)| store(name, value).expect("kept by fit_xattrs"))
        .collect();
    out.sort_by(|a, b| (a.index, a.name.len(), a.name).cmp(&(b.index, b.name.len(), b.name)));
    out
}

/// Splits an entry's attributes into those ext4 can hold and those it cannot, with the
/// reason: unknown namespaces, bad names, malformed ACLs, and whatever no longer fits in
/// one 4 KiB block (kept in tar order while they fit). A name given twice keeps its last
/// value, as PAX records override earlier ones.
pub(super) fn fit_xattrs(xattrs: Xattrs) -> (Xattrs, Dropped) {
    let mut last = HashMap::new();
    for (i, (name, _)) in xattrs.iter().enumerate() {
        last.insert(name.clone(), i);
    }
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    // The block's header and the four zero bytes that end its entry list.
    let mut used = 32 + 4;
    for (i, (name, value)) in xattrs.into_iter().enumerate() {
        if last[&name] != i {
            continue;
        }
        match store(&name, &value) {
            Err(reason) => dropped.push((name, reason)),
            Ok(s) => {
                let size =
                    (16 + s.name.len()).next_multiple_of(4) + s.value.len().next_multiple_of(4);
                if used + size > BLOCK_SIZE as usize {
                    dropped.push((name, "attributes exceed one 4 KiB block"));
                } else {
                    used += size;
                    kept.push((name, value));
                }
            }
        }
    }
    (kept, dropped)
}

/// POSIX ACLs arrive in the xattr format (version 2, 8-byte entries); ext4 stores version 1
/// with 4-byte entries for the tags that carry no id.
fn acl_to_disk(value: &[u8]) -> Option<Vec<u8>> {
    let (version, entries) = value.split_at_checked(4)?;
    let entries = entries.chunks_exact(8);
    if u32::from_le_bytes(version.try_into().ok()?) != 2 || !entries.remainder().is_empty() {
        return None;
    }
    let mut out = 1u32.to_le_bytes().to_vec();
    for e in entries {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        out.extend_from_slice(&e[..4]);
        match tag {
            0x01 | 0x04 | 0x10 | 0x20 => {}
            0x02 | 0x08 => out.extend_from_slice(&e[4..8]),
            _ => return None,
        }
    }
    Some(out)
}

/// The kernel's ext4_xattr_hash_entry (names are ASCII in practice, where its signed and
/// unsigned variants agree).
fn entry_hash(name: &[u8], value: &[u8]) -> u32 {
    let mut hash: u32 = 0;
    for &c in name {
        hash = (hash << 5) ^ (hash >> 27) ^ u32::from(c);
    }
    for chunk in value.chunks(4) {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        hash = (hash << 16) ^ (hash >> 16) ^ u32::from_le_bytes(word);
    }
    hash
}

/// Lays entries out in `area`: entries from `entries_off` on, values from the end down;
/// value offsets count from `base`. `None` when they do not fit.
fn pack(attrs: &[Stored], area: &mut [u8], entries_off: usize, base: usize) -> Option<Vec<u32>> {
    let mut entry = entries_off;
    let mut value_end = area.len();
    let mut hashes = Vec::with_capacity(attrs.len());
    for a in attrs {
        let entry_len = (16 + a.name.len()).next_multiple_of(4);
        let value_len = a.value.len().next_multiple_of(4);
        let value_start = value_end.checked_sub(value_len)?;
        // Keep four zero bytes after the last entry: the list terminator.
        if entry + entry_len + 4 > value_start {
            return None;
        }
        let hash = entry_hash(a.name, &a.value);
        let e = &mut area[entry..entry + entry_len];
        e[0] = a.name.len() as u8;
        e[1] = a.index;
        let offs = if a.value.is_empty() {
            0
        } else {
            value_start - base
        };
        put16(e, 2, offs as u16);
        put32(e, 8, a.value.len() as u32);
        put32(e, 12, hash);
        e[16..16 + a.name.len()].copy_from_slice(a.name);
        area[value_start..value_start + a.value.len()].copy_from_slice(&a.value);
        hashes.push(hash);
        entry += entry_len;
        value_end = value_start;
    }
    Some(hashes)
}

pub(super) enum XattrPlace {
    None,
    Inline(Vec<u8>),
    Block(Vec<u8>),
}

/// Inline in the inode when they fit, else one xattr block (refcount 1).
pub(super) fn encode_xattrs(xattrs: &[(Vec<u8>, Vec<u8>)]) -> XattrPlace {
    if xattrs.is_empty() {
        return XattrPlace::None;
    }
    let attrs = stored(xattrs);
    let mut inline = vec![0u8; INODE_SIZE - XATTR_INLINE_OFFSET];
    put32(&mut inline, 0, XATTR_MAGIC);
    if pack(&attrs, &mut inline, 4, 4).is_some() {
        return XattrPlace::Inline(inline);
    }
    let mut block = vec![0u8; BLOCK_SIZE as usize];
    let hashes = pack(&attrs, &mut block, 32, 0).expect("checked when the entry was read");
    put32(&mut block, 0, XATTR_MAGIC);
    put32(&mut block, 4, 1);
    put32(&mut block, 8, 1);
    let block_hash = hashes.iter().fold(0u32, |h, &e| (h << 16) ^ (h >> 16) ^ e);
    put32(&mut block, 12, block_hash);
    XattrPlace::Block(block)
}

/// Filesystem-wide values for the superblock.
pub(super) struct SuperFields<'a> {
    pub hash_seed: [u32; 4],
    pub blocks: u64,
    pub free_blocks: u64,
    pub inodes: u32,
    pub free_inodes: u32,
    pub inodes_per_group: u32,
    pub uuid: [u8; 16],
    pub label: &'a [u8],
}

const COMPAT_EXT_ATTR: u32 = 0x8;
const COMPAT_DIR_INDEX: u32 = 0x20;
const FLAGS_UNSIGNED_HASH: u32 = 0x2;
const COMPAT_SPARSE_SUPER2: u32 = 0x200;
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_LARGE_FILE: u32 = 0x2;
const RO_COMPAT_DIR_NLINK: u32 = 0x20;
const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;

pub(super) fn encode_superblock(f: &SuperFields) -> [u8; 1024] {
    let mut b = [0u8; 1024];
    put32(&mut b, 0x00, f.inodes);
    put32(&mut b, 0x04, f.blocks as u32);
    put32(&mut b, 0x0C, f.free_blocks as u32);
    put32(&mut b, 0x10, f.free_inodes);
    put32(&mut b, 0x14, 0); // s_first_data_block: 0 with 4 KiB blocks
    put32(&mut b, 0x18, 2); // log2(4096) - 10
    put32(&mut b, 0x1C, 2);
    put32(&mut b, 0x20, BLOCKS_PER_GROUP as u32);
    put32(&mut b, 0x24, BLOCKS_PER_GROUP as u32);
    put32(&mut b, 0x28, f.inodes_per_group);
    put16(&mut b, 0x36, 0xFFFF); // s_max_mnt_count: no forced checks
    put16(&mut b, 0x38, 0xEF53);
    put16(&mut b, 0x3A, 1); // clean
    put16(&mut b, 0x3C, 1); // errors=continue
    put32(&mut b, 0x4C, 1); // dynamic revision
    put32(&mut b, 0x54, FIRST_INO);
    put16(&mut b, 0x58, INODE_SIZE as u16);
    put32(
        &mut b,
        0x5C,
        COMPAT_EXT_ATTR | COMPAT_DIR_INDEX | COMPAT_SPARSE_SUPER2,
    );
    put32(
        &mut b,
        0x60,
        INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_FLEX_BG,
    );
    put32(
        &mut b,
        0x64,
        RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE | RO_COMPAT_DIR_NLINK | RO_COMPAT_EXTRA_ISIZE,
    );
    b[0x68..0x78].copy_from_slice(&f.uuid);
    b[0x78..0x78 + f.label.len()].copy_from_slice(f.label);
    for (i, w) in f.hash_seed.iter().enumerate() {
        put32(&mut b, 0xEC + 4 * i, *w);
    }
    b[0xFC] = DX_HASH_HALF_MD4; // s_def_hash_version
    put32(&mut b, 0x160, FLAGS_UNSIGNED_HASH);
    put16(&mut b, 0x15C, EXTRA_ISIZE); // s_min_extra_isize
    put16(&mut b, 0x15E, EXTRA_ISIZE); // s_want_extra_isize
    b[0x174] = 4; // s_log_groups_per_flex
                  // s_backup_bgs (0x24C) stay 0: sparse_super2 with no backup superblocks.
    b
}

pub(super) struct GroupFields {
    pub block_bitmap: u64,
    pub inode_bitmap: u64,
    pub inode_table: u64,
    pub free_blocks: u32,
    pub free_inodes: u32,
    pub dirs: u32,
}

pub(super) fn encode_group(buf: &mut [u8], g: &GroupFields) {
    put32(buf, 0x00, g.block_bitmap as u32);
    put32(buf, 0x04, g.inode_bitmap as u32);
    put32(buf, 0x08, g.inode_table as u32);
    put16(buf, 0x0C, g.free_blocks as u16);
    put16(buf, 0x0E, g.free_inodes as u16);
    put16(buf, 0x10, g.dirs as u16);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_beyond_2038_use_epoch_bits() {
        assert_eq!(encode_time(0, 5), (0, 5 << 2));
        assert_eq!(encode_time(-1, 0), (u32::MAX, 0));
        assert_eq!(encode_time(1 << 31, 0), (1 << 31, 1));
    }

    #[test]
    fn dir_blocks_are_full() {
        let mut p = DirPacker::new();
        for i in 0..400u32 {
            p.add(100 + i, FT_REG, format!("file-{i:04}").as_bytes());
        }
        let bytes = p.finish();
        assert_eq!(bytes.len() % BLOCK_SIZE as usize, 0);
        // Walking each block's rec_lens lands exactly on its end and sees every entry.
        let mut seen = 0;
        for block in bytes.chunks(BLOCK_SIZE as usize) {
            let mut off = 0;
            while off < block.len() {
                let rec = u16::from_le_bytes([block[off + 4], block[off + 5]]) as usize;
                assert!(rec >= 8);
                seen += 1;
                off += rec;
            }
            assert_eq!(off, block.len());
        }
        assert_eq!(seen, 400);
    }

    #[test]
    fn acl_conversion() {
        let mut x = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 6u16, u32::MAX),
            (2, 4, 1000),
            (4, 4, u32::MAX),
            (0x10, 4, u32::MAX),
            (0x20, 0, u32::MAX),
        ] {
            x.extend_from_slice(&tag.to_le_bytes());
            x.extend_from_slice(&perm.to_le_bytes());
            x.extend_from_slice(&id.to_le_bytes());
        }
        let d = acl_to_disk(&x).unwrap();
        assert_eq!(d.len(), 4 + 4 + 8 + 4 + 4 + 4);
        assert_eq!(&d[8..16], &[2, 0, 4, 0, 0xe8, 3, 0, 0]);
        assert!(acl_to_disk(&x[..7]).is_none());
    }
}
