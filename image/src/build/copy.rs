//! One COPY or ADD as the entries of a layer tar, with BuildKit's rules (the Dockerfile
//! frontend's `FollowSymlinks`, `CopyDirContentsOnly`, `AllowWildcard`,
//! `AllowEmptyWildcard`, `CreateDestPath`, `AttemptUnpack` for ADD; fsutil's copier):
//!
//! - Sources are relative to the source root; `..` stops there and `/x` means `x` in it.
//!   Globs are Go `filepath.Match` per component. A glob matching nothing adds nothing;
//!   when every source matched nothing: `COPY failed: no source files were specified`. A
//!   plain source that is missing or `.dockerignore`d: `"x": not found`.
//! - A source that is a symlink is followed (inside the root); symlinks below a copied
//!   directory are copied as symlinks. A directory source copies its contents.
//! - The destination is relative to WORKDIR; it is a directory when it ends in `/` (or
//!   `.`), when there are several sources, or when the image has a directory there (a
//!   file then goes inside it). Several sources into an existing non-directory fail.
//!   Symlinks in the destination path are followed inside the image.
//! - Missing parents of the destination are created `0755`, owned by `--chown`'s ids (root
//!   without it), as fsutil's `MkdirAll` does; hk gives them mtime 0 where BuildKit uses
//!   the current time, so the layer is reproducible. Existing parents are written with
//!   their metadata from the image, as a layer diff would.
//! - Owners: 0:0 from the build context, kept from the image for `--from`, `--chown`
//!   overrides both. Modes are kept unless `--chmod` (octal) sets them for every copied
//!   file and directory (not symlinks, not created parents), as BuildKit does. Mtimes are
//!   kept. Hardlinks within one copy stay hardlinks (context only, see [`super::view`]).
//!   Sockets are skipped (Docker's tar cannot hold them); FIFOs and device nodes are copied.
//! - A file over an image directory, or a directory over an image non-directory, fails as
//!   in BuildKit (`cannot replace to directory`, `cannot copy to non-directory`).
//! - ADD: a local file that is a tar (plain, gzip, bzip2 or zstd, detected by content and a
//!   valid first tar header, as BuildKit does) is extracted into the destination directory
//!   with its own owners (unless `--chown`) and modes (`--chmod` does not apply, as in
//!   BuildKit); entries climbing out with `..`, hardlinks to entries not in the archive and
//!   whiteout names (`.wh.*`) are refused. xz archives are refused with a clear error (no
//!   well-kept pure-Rust xz decoder is used yet). URLs and git sources are refused: hk
//!   builds offline.
//! - `--link`: the destination image is not consulted (BuildKit copies onto scratch), so
//!   only the syntax of the destination decides whether it is a directory.

use super::glob::{has_wildcards, Glob};
use super::ignore::Ignore;
use super::path::{components_in_root, join};
use super::tree::{resolve, HostTree, Kind, Meta, Tree};
use super::view::RootView;
use super::{Error, Result};
use crate::digest::Hasher;
use crate::Digest;
use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};

/// Deepest directory nesting copied, the ext4 writer's limit too.
const MAX_DEPTH: usize = 1024;

/// Where a COPY reads from.
pub struct Source<'a> {
    inner: SourceKind<'a>,
}

enum SourceKind<'a> {
    Context { tree: HostTree, ignore: Ignore },
    Image(&'a RootView),
}

impl Source<'static> {
    /// The build context directory, filtered by its `.dockerignore`.
    pub fn context(dir: &std::path::Path, ignore: Ignore) -> Result<Source<'static>> {
        Ok(Source {
            inner: SourceKind::Context {
                tree: HostTree::open(dir)?,
                ignore,
            },
        })
    }
}

impl<'a> Source<'a> {
    /// Another stage or image, for `COPY --from`.
    pub fn image(view: &'a RootView) -> Source<'a> {
        Source {
            inner: SourceKind::Image(view),
        }
    }

    fn tree(&self) -> &dyn Tree {
        match &self.inner {
            SourceKind::Context { tree, .. } => tree,
            SourceKind::Image(v) => *v,
        }
    }

    fn ignore(&self) -> Option<&Ignore> {
        match &self.inner {
            SourceKind::Context { ignore, .. } => Some(ignore),
            SourceKind::Image(_) => None,
        }
    }

    /// Whether `path` is missing from the context as the client would send it: excluded,
    /// unless it is a directory that an exception keeps as the parent of something.
    fn absent(&self, path: &[String], meta: Option<&Meta>) -> bool {
        self.ignore().is_some_and(|i| {
            let rel = join(path);
            i.matches(&rel)
                && !(meta.is_some_and(|m| m.kind == Kind::Dir) && i.may_include_under(&rel))
        })
    }

    fn keeps_owners(&self) -> bool {
        matches!(self.inner, SourceKind::Image(_))
    }
}

/// One COPY or ADD, its variables already expanded.
#[derive(Debug, Clone, Default)]
pub struct CopyOp {
    pub sources: Vec<String>,
    pub dest: String,
    /// The stage's WORKDIR, absolute; a relative `dest` is below it.
    pub workdir: String,
    /// Ids already resolved (see [`RootView::resolve_chown`]).
    pub chown: Option<(u32, u32)>,
    /// `--chmod` in octal; hk does not support the symbolic form yet.
    pub chmod: Option<u32>,
    pub add: bool,
    /// `--link`: copy without looking at the destination image.
    pub link: bool,
}

/// What a copy wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// FIFOs and device nodes.
    pub specials: u64,
    /// Sockets, which a tar cannot hold.
    pub skipped: u64,
    /// Bytes of regular-file content.
    pub bytes: u64,
    /// Archives ADD extracted.
    pub archives: u64,
}

/// A source argument's match.
struct Match {
    /// The last component as named (or matched): a file copied into a directory keeps it.
    name: String,
    path: Vec<String>,
    meta: Meta,
}

fn check_url(op: &CopyOp, src: &str) -> Result<()> {
    let lower = src.to_ascii_lowercase();
    let git = lower.starts_with("git@")
        || lower.starts_with("git://")
        || ((lower.starts_with("https://") || lower.starts_with("http://"))
            && (lower.ends_with(".git") || lower.contains(".git#")));
    let url = lower.starts_with("http://") || lower.starts_with("https://");
    let cmd = if op.add { "ADD" } else { "COPY" };
    if git {
        return Err(Error::Url {
            url: format!("{cmd} {src}"),
            reason: "git sources are not supported offline; clone the repository into the build context and COPY it",
        });
    }
    if url {
        return Err(Error::Url {
            url: format!("{cmd} {src}"),
            reason: if op.add {
                "remote URLs are not supported offline; download the file into the build context and COPY it"
            } else {
                "source can't be a URL for COPY"
            },
        });
    }
    Ok(())
}

/// Every match of every source argument, in order; plain sources must exist.
fn expand(src: &Source, op: &CopyOp) -> Result<Vec<Match>> {
    let tree = src.tree();
    let mut out = Vec::new();
    for arg in &op.sources {
        check_url(op, arg)?;
        let comps = components_in_root(arg);
        if !has_wildcards(arg) {
            let not_found = || Error::NotFound(arg.clone());
            let r = match resolve(tree, &comps, true) {
                Ok(r) => r,
                Err(Error::Path { .. }) => return Err(not_found()),
                Err(e) => return Err(e),
            };
            let meta = r.meta.ok_or_else(not_found)?;
            if src.absent(&comps, Some(&meta)) || src.absent(&r.path, Some(&meta)) {
                return Err(not_found());
            }
            out.push(Match {
                name: comps.last().cloned().unwrap_or_default(),
                path: r.path,
                meta,
            });
            continue;
        }
        // Candidates: resolved directories reached so far, with the name they were reached by.
        let mut candidates: Vec<(String, Vec<String>, Option<Meta>)> =
            vec![(String::new(), Vec::new(), tree.lstat(&[])?)];
        for comp in &comps {
            let mut next = Vec::new();
            for (_, dir, meta) in candidates {
                if meta.as_ref().map(|m| m.kind) != Some(Kind::Dir) {
                    continue;
                }
                let names = if has_wildcards(comp) {
                    let glob =
                        Glob::new(comp).map_err(|e| Error::Op(format!("source {arg:?}: {e}")))?;
                    tree.read_dir(&dir)?
                        .into_iter()
                        .filter(|n| glob.matches(n))
                        .collect()
                } else {
                    vec![unescape(comp)]
                };
                for name in names {
                    let mut p = dir.clone();
                    p.push(name.clone());
                    let r = match resolve(tree, &p, true) {
                        Ok(r) => r,
                        Err(Error::Path { .. }) => continue,
                        Err(e) => return Err(e),
                    };
                    if r.meta.is_some()
                        && !src.absent(&p, r.meta.as_ref())
                        && !src.absent(&r.path, r.meta.as_ref())
                    {
                        next.push((name, r.path, r.meta));
                    }
                }
            }
            candidates = next;
        }
        for (name, path, meta) in candidates {
            out.push(Match {
                name,
                path,
                meta: meta.expect("only existing paths are kept"),
            });
        }
    }
    if out.is_empty() {
        return Err(Error::NoSourceFiles);
    }
    Ok(out)
}

/// `filepath.Match` escapes in a component without wildcards name the character itself.
fn unescape(comp: &str) -> String {
    let mut out = String::with_capacity(comp.len());
    let mut chars = comp.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Walks the inside of directory `dir` (resolved), calling `visit(source path, path
/// relative to `dir`, metadata)` parents first, in name order. `.dockerignore`d entries are
/// skipped; an excluded directory is still entered when an exception may take something
/// below it back, and is then visited just before the first thing it holds.
fn walk(src: &Source, dir: &[String], visit: &mut Visit) -> Result<()> {
    struct State<'v> {
        src_path: Vec<String>,
        rel: Vec<String>,
        /// Excluded directories entered but not yet visited: (depth in `rel`, metadata).
        pending: Vec<(usize, Meta)>,
        visit: &'v mut Visit<'v>,
    }
    fn flush(st: &mut State) -> Result<()> {
        let base = st.src_path.len() - st.rel.len();
        for (depth, meta) in std::mem::take(&mut st.pending) {
            (st.visit)(&st.src_path[..base + depth], &st.rel[..depth], &meta)?;
        }
        Ok(())
    }
    fn inner(src: &Source, st: &mut State) -> Result<()> {
        if st.rel.len() >= MAX_DEPTH {
            return Err(Error::Path {
                path: src.tree().describe(&st.src_path),
                reason: format!("more than {MAX_DEPTH} directories deep"),
            });
        }
        let tree = src.tree();
        for name in tree.read_dir(&st.src_path)? {
            st.src_path.push(name.clone());
            st.rel.push(name);
            let result: Result<()> = (|| {
                let Some(meta) = tree.lstat(&st.src_path)? else {
                    return Ok(()); // gone since the listing
                };
                let rel_ctx = join(&st.src_path);
                if let Some(ignore) = src.ignore().filter(|i| i.matches(&rel_ctx)) {
                    if meta.kind == Kind::Dir && ignore.may_include_under(&rel_ctx) {
                        st.pending.push((st.rel.len(), meta));
                        inner(src, st)?;
                        st.pending.retain(|(d, _)| *d < st.rel.len());
                    }
                    return Ok(());
                }
                flush(st)?;
                (st.visit)(&st.src_path, &st.rel, &meta)?;
                if meta.kind == Kind::Dir {
                    inner(src, st)?;
                }
                Ok(())
            })();
            st.src_path.pop();
            st.rel.pop();
            result?;
        }
        Ok(())
    }
    let mut st = State {
        src_path: dir.to_vec(),
        rel: Vec::new(),
        pending: Vec::new(),
        visit,
    };
    inner(src, &mut st)
}

/// A reader that must yield exactly `left` bytes: a file that shrank while it was copied
/// would otherwise leave a tar whose header promises more than follows.
struct Exact<R> {
    inner: R,
    left: u64,
    what: String,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: shorter than its size (changed while copied?)",
                    self.what
                ),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The tar being written, with what it already holds.
struct Out<'b, W: Write> {
    tar: &'b mut tar::Builder<W>,
    dirs: HashSet<String>,
    links: HashMap<(u64, u64), String>,
    stats: CopyStats,
}

fn header(kind: tar::EntryType, mode: u32, owner: (u32, u32), mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(owner.0.into());
    h.set_gid(owner.1.into());
    h.set_mtime(mtime);
    h.set_size(0);
    h
}

impl<W: Write> Out<'_, W> {
    fn dir(&mut self, path: &str, mode: u32, owner: (u32, u32), mtime: u64) -> Result<()> {
        let mut h = header(tar::EntryType::Directory, mode, owner, mtime);
        self.tar
            .append_data(&mut h, format!("{path}/"), io::empty())
            .map_err(Error::Write)?;
        if self.dirs.insert(path.to_string()) {
            self.stats.dirs += 1;
        }
        Ok(())
    }

    /// Makes sure every directory of `target` (relative, resolved) is in the layer: as the
    /// image has it, or created as fsutil's `MkdirAll` creates it.
    fn ensure_dirs(
        &mut self,
        target: &[String],
        dest_root: Option<&RootView>,
        chown: Option<(u32, u32)>,
    ) -> Result<()> {
        for i in 1..=target.len() {
            let p = join(&target[..i]);
            if self.dirs.contains(&p) {
                continue;
            }
            match dest_root
                .map(|r| r.lstat(&target[..i]))
                .transpose()?
                .flatten()
            {
                Some(m) if m.kind == Kind::Dir => self.dir(&p, m.mode, (m.uid, m.gid), m.mtime)?,
                Some(_) => {
                    return Err(Error::Path {
                        path: format!("/{p}"),
                        reason: "cannot copy to non-directory".into(),
                    })
                }
                None => self.dir(&p, 0o755, chown.unwrap_or((0, 0)), 0)?,
            }
        }
        Ok(())
    }

    /// Writes one entry of `tree` at `target`.
    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        tree: &dyn Tree,
        src_path: &[String],
        meta: &Meta,
        target: &[String],
        owner: (u32, u32),
        chmod: Option<u32>,
        dest_root: Option<&RootView>,
    ) -> Result<()> {
        let path = join(target);
        if let Some(existing) = dest_root.map(|r| r.lstat(target)).transpose()?.flatten() {
            let clash = match (meta.kind == Kind::Dir, existing.kind == Kind::Dir) {
                (true, false) => Some("cannot copy to non-directory"),
                (false, true) => Some("cannot replace to directory with file"),
                _ => None,
            };
            if let Some(reason) = clash {
                return Err(Error::Path {
                    path: format!("/{path}"),
                    reason: reason.into(),
                });
            }
        }
        let mode = chmod.unwrap_or(meta.mode);
        match meta.kind {
            Kind::Dir => self.dir(&path, mode, owner, meta.mtime)?,
            Kind::File => {
                if let Some(first) = meta.link_id.and_then(|id| self.links.get(&id)) {
                    let mut h = header(tarEntry::Link, mode, owner, meta.mtime);
                    let first = first.clone();
                    self.tar
                        .append_link(&mut h, &path, &first)
                        .map_err(Error::Write)?;
                    self.stats.hardlinks += 1;
                    return Ok(());
                }
                let mut h = header(tarEntry::Regular, mode, owner, meta.mtime);
                h.set_size(meta.size);
                let reader = Exact {
                    inner: tree.open(src_path, meta)?,
                    left: meta.size,
                    what: tree.describe(src_path),
                };
                self.tar
                    .append_data(&mut h, &path, reader)
                    .map_err(Error::Write)?;
                if let Some(id) = meta.link_id {
                    self.links.insert(id, path);
                }
                self.stats.files += 1;
                self.stats.bytes += meta.size;
            }
            Kind::Symlink => {
                let target = tree.read_link(src_path)?;
                let mut h = header(tarEntry::Symlink, 0o777, owner, meta.mtime);
                self.tar
                    .append_link(&mut h, &path, &target)
                    .map_err(Error::Write)?;
                self.stats.symlinks += 1;
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let kind = match meta.kind {
                    Kind::Char => tarEntry::Char,
                    Kind::Block => tarEntry::Block,
                    _ => tarEntry::Fifo,
                };
                let mut h = header(kind, mode, owner, meta.mtime);
                if kind != tarEntry::Fifo {
                    h.set_device_major(libc::major(meta.rdev))
                        .and_then(|_| h.set_device_minor(libc::minor(meta.rdev)))
                        .map_err(Error::Write)?;
                }
                self.tar
                    .append_data(&mut h, &path, io::empty())
                    .map_err(Error::Write)?;
                self.stats.specials += 1;
            }
            Kind::Socket => self.stats.skipped += 1,
        }
        Ok(())
    }
}

use tar::EntryType as tarEntry;

/// What [`walk`] calls for each entry: (source path, path relative to the walked
/// directory, metadata).
type Visit<'v> = dyn FnMut(&[String], &[String], &Meta) -> Result<()> + 'v;

/// Where the destination is, and whether it is a directory.
struct Dest {
    path: Vec<String>,
    is_dir: bool,
}

fn destination(op: &CopyOp, dest_root: Option<&RootView>, several: bool) -> Result<Dest> {
    let text = if op.dest.starts_with('/') {
        op.dest.clone()
    } else {
        format!("{}/{}", op.workdir, op.dest)
    };
    let dir_syntax = op.dest.ends_with('/') || op.dest == "." || op.dest.ends_with("/.");
    let comps = components_in_root(&text);
    let (path, existing) = match dest_root {
        Some(root) => {
            let r = resolve(root, &comps, true).map_err(|e| match e {
                Error::Path { path, .. } => Error::Path {
                    path,
                    reason: "cannot copy to non-directory".into(),
                },
                e => e,
            })?;
            (r.path, r.meta)
        }
        None => (comps, None),
    };
    let exists_dir = existing.as_ref().is_some_and(|m| m.kind == Kind::Dir);
    if several && !dir_syntax && !exists_dir {
        let cmd = if op.add { "ADD" } else { "COPY" };
        return Err(Error::Op(format!(
            "When using {cmd} with more than one source file, the destination must be a directory and end with a /"
        )));
    }
    let is_dir = dir_syntax || several || exists_dir;
    if is_dir && existing.is_some() && !exists_dir {
        return Err(Error::Path {
            path: format!("/{}", join(&path)),
            reason: "cannot copy to non-directory".into(),
        });
    }
    Ok(Dest { path, is_dir })
}

/// Performs one COPY or ADD: every entry it creates is appended to `out` (the caller
/// finishes the tar). `dest_root` is the image being built, for the destination checks.
pub fn copy_to_layer(
    src: &Source,
    op: &CopyOp,
    dest_root: &RootView,
    out: &mut tar::Builder<impl Write>,
) -> Result<CopyStats> {
    let matches = expand(src, op)?;
    let dest_root = (!op.link).then_some(dest_root);
    let several = matches.len() > 1 || op.sources.len() > 1;
    let dest = destination(op, dest_root, several)?;
    let tree = src.tree();
    let mut out = Out {
        tar: out,
        dirs: HashSet::new(),
        links: HashMap::new(),
        stats: CopyStats::default(),
    };
    let owner_of = |m: &Meta| match op.chown {
        Some(ids) => ids,
        None if src.keeps_owners() => (m.uid, m.gid),
        None => (0, 0),
    };
    for m in &matches {
        if op.add && m.meta.kind == Kind::File {
            if let Some(kind) = archive_kind(tree, &m.path, &m.meta)? {
                out.ensure_dirs(&dest.path, dest_root, op.chown)?;
                extract(tree, m, kind, &dest.path, op.chown, &mut out)?;
                out.stats.archives += 1;
                continue;
            }
        }
        if m.meta.kind == Kind::Dir {
            out.ensure_dirs(&dest.path, dest_root, op.chown)?;
            walk(src, &m.path, &mut |src_path, rel, meta| {
                let mut target = dest.path.clone();
                target.extend_from_slice(rel);
                out.entry(
                    tree,
                    src_path,
                    meta,
                    &target,
                    owner_of(meta),
                    op.chmod,
                    dest_root,
                )
            })?;
        } else {
            let mut target = dest.path.clone();
            if dest.is_dir {
                target.push(m.name.clone());
            }
            if target.is_empty() {
                return Err(Error::Op(
                    "cannot copy a file over the root directory".into(),
                ));
            }
            out.ensure_dirs(&target[..target.len() - 1], dest_root, op.chown)?;
            out.entry(
                tree,
                &m.path,
                &m.meta,
                &target,
                owner_of(&m.meta),
                op.chmod,
                dest_root,
            )?;
        }
    }
    Ok(out.stats)
}

/// How an ADD source is compressed, when it is an archive at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Archive {
    Plain,
    Gzip,
    Bzip2,
    Zstd,
}

fn decompress<'r>(kind: Archive, r: Box<dyn Read + 'r>) -> Result<Box<dyn Read + 'r>> {
    Ok(match kind {
        Archive::Plain => r,
        Archive::Gzip => Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(r))),
        Archive::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(io::BufReader::new(r))),
        Archive::Zstd => Box::new(
            zstd::stream::read::Decoder::new(r)
                .map_err(|e| Error::Op(format!("zstd decoder: {e}")))?,
        ),
    })
}

/// BuildKit's `isArchivePath`: a regular file whose (decompressed) start is a tar header.
fn archive_kind(tree: &dyn Tree, path: &[String], meta: &Meta) -> Result<Option<Archive>> {
    let mut magic = [0u8; 6];
    let n = read_up_to(&mut tree.open(path, meta)?, &mut magic).map_err(|e| Error::Path {
        path: tree.describe(path),
        reason: e.to_string(),
    })?;
    let magic = &magic[..n];
    let kind = if magic.starts_with(&[0x1f, 0x8b]) {
        Archive::Gzip
    } else if magic.starts_with(b"BZh") {
        Archive::Bzip2
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Archive::Zstd
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Err(Error::Path {
            path: tree.describe(path),
            reason: "xz-compressed archives are not supported by ADD in hk yet; \
                     decompress it into the build context first"
                .into(),
        });
    } else {
        Archive::Plain
    };
    let mut block = [0u8; 512];
    let got = match decompress(kind, tree.open(path, meta)?) {
        Ok(mut r) => read_up_to(&mut r, &mut block).unwrap_or(0),
        Err(_) => 0,
    };
    Ok((got == 512 && tar_header_valid(&block)).then_some(kind))
}

fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A tar header block: its checksum (bytes summed with the checksum field as spaces)
/// matches, and it is not the all-zero end marker.
fn tar_header_valid(block: &[u8; 512]) -> bool {
    if block.iter().all(|&b| b == 0) {
        return false;
    }
    let field = &block[148..156];
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .skip_while(|&&b| b == b' ')
        .map(|&b| b as char)
        .collect();
    let Ok(stored) = u32::from_str_radix(text.trim(), 8) else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    sum == stored
}

/// ADD's extraction of a local archive into `dest`.
fn extract<W: Write>(
    tree: &dyn Tree,
    m: &Match,
    kind: Archive,
    dest: &[String],
    chown: Option<(u32, u32)>,
    out: &mut Out<W>,
) -> Result<()> {
    let what = tree.describe(&m.path);
    let bad = |entry: &str, reason: &str| Error::Path {
        path: format!("{what}: {entry}"),
        reason: reason.to_string(),
    };
    let io_err = |e: io::Error| Error::Path {
        path: what.clone(),
        reason: e.to_string(),
    };
    let mut archive = tar::Archive::new(decompress(kind, tree.open(&m.path, &m.meta)?)?);
    let mut seen: HashSet<String> = HashSet::new();
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        let raw = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| bad("?", "entry name is not UTF-8 (not supported by hk build)"))?;
        let inside = contained(&raw).ok_or_else(|| bad(&raw, "leaves the destination (..)"))?;
        if inside.is_empty() {
            continue; // `./` itself: the destination, already there
        }
        if inside.last().is_some_and(|n| n.starts_with(".wh.")) {
            return Err(bad(
                &raw,
                "whiteout names cannot be extracted into an image",
            ));
        }
        let mut target = dest.to_vec();
        target.extend(inside.iter().cloned());
        out.ensure_dirs(&target[..target.len() - 1], None, chown)?;
        let h = entry.header();
        let mode = h.mode().map_err(io_err)? & 0o7777;
        let owner = match chown {
            Some(ids) => ids,
            None => (
                h.uid().map_err(io_err)? as u32,
                h.gid().map_err(io_err)? as u32,
            ),
        };
        let mtime = h.mtime().unwrap_or(0);
        let path = join(&target);
        let et = h.entry_type();
        match et {
            tarEntry::Directory => out.dir(&path, mode, owner, mtime)?,
            tarEntry::Regular | tarEntry::Continuous => {
                let size = entry.size();
                let mut nh = header(tarEntry::Regular, mode, owner, mtime);
                nh.set_size(size);
                let reader = Exact {
                    inner: &mut entry,
                    left: size,
                    what: format!("{what}: {raw}"),
                };
                out.tar
                    .append_data(&mut nh, &path, reader)
                    .map_err(Error::Write)?;
                out.stats.files += 1;
                out.stats.bytes += size;
            }
            tarEntry::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .ok_or_else(|| bad(&raw, "symlink without a target"))?;
                let mut nh = header(tarEntry::Symlink, 0o777, owner, mtime);
                out.tar
                    .append_link(&mut nh, &path, &link)
                    .map_err(Error::Write)?;
                out.stats.symlinks += 1;
            }
            tarEntry::Link => {
                let link = entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .ok_or_else(|| bad(&raw, "hardlink without a target"))?;
                let inside_link = contained(&link)
                    .filter(|l| seen.contains(&join(l)))
                    .ok_or_else(|| bad(&raw, "hardlink to an entry not in the archive"))?;
                let mut first = dest.to_vec();
                first.extend(inside_link);
                let mut nh = header(tarEntry::Link, mode, owner, mtime);
                out.tar
                    .append_link(&mut nh, &path, join(&first))
                    .map_err(Error::Write)?;
                out.stats.hardlinks += 1;
            }
            tarEntry::Char | tarEntry::Block | tarEntry::Fifo => {
                let mut nh = header(et, mode, owner, mtime);
                if let (Ok(Some(major)), Ok(Some(minor))) = (h.device_major(), h.device_minor()) {
                    nh.set_device_major(major)
                        .and_then(|_| nh.set_device_minor(minor))
                        .map_err(Error::Write)?;
                }
                out.tar
                    .append_data(&mut nh, &path, io::empty())
                    .map_err(Error::Write)?;
                out.stats.specials += 1;
            }
            // PAX and GNU long-name records are consumed by the reader; anything else
            // (sparse, volume labels) is refused rather than guessed at.
            other => return Err(bad(&raw, &format!("unsupported tar entry type {other:?}"))),
        }
        seen.insert(join(&inside));
    }
    Ok(())
}

/// An archive member's path inside the destination, or `None` if `..` climbs out.
fn contained(raw: &str) -> Option<Vec<String>> {
    let cleaned = super::path::clean(raw.trim_start_matches('/'));
    if cleaned == ".." || cleaned.starts_with("../") {
        return None;
    }
    Some(
        cleaned
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_string)
            .collect(),
    )
}

/// The cache key input of a COPY or ADD: a sha256 over exactly what it would read.
///
/// Included: the operation itself (destination, WORKDIR, `--chown`, `--chmod`, ADD,
/// `--link`), each source argument and what it matched, and for every entry the copy
/// visits its path relative to the match, type, permission bits, size, content hash,
/// symlink target and device number, and its owners when they are copied (`--from`;
/// context files are always written 0:0). Not included: modification times, as in
/// BuildKit's content-based cache checksums (touching a file does not invalidate the
/// cache, changing its bytes does); `.dockerignore`d files, which the copy never reads;
/// the destination image, which the caller's cache key already names by its layers.
pub fn source_digest(src: &Source, op: &CopyOp) -> Result<Digest> {
    let matches = expand(src, op)?;
    let tree = src.tree();
    let h = std::cell::RefCell::new(Hasher::default());
    let record = |parts: &[&[u8]]| {
        let mut h = h.borrow_mut();
        for p in parts {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
    };
    let chown = op
        .chown
        .map(|(u, g)| format!("{u}:{g}"))
        .unwrap_or_default();
    let chmod = op.chmod.map(|m| format!("{m:o}")).unwrap_or_default();
    record(&[
        b"hk-copy-v1",
        op.dest.as_bytes(),
        op.workdir.as_bytes(),
        chown.as_bytes(),
        chmod.as_bytes(),
        &[u8::from(op.add), u8::from(op.link)],
    ]);
    for a in &op.sources {
        record(&[b"arg", a.as_bytes()]);
    }
    let keeps_owners = src.keeps_owners();
    let mut entry = |src_path: &[String], rel: &[String], meta: &Meta| -> Result<()> {
        let content = match meta.kind {
            Kind::File => {
                let mut fh = Hasher::default();
                let reader = Exact {
                    inner: tree.open(src_path, meta)?,
                    left: meta.size,
                    what: tree.describe(src_path),
                };
                fh.read_all(reader).map_err(|e| Error::Path {
                    path: tree.describe(src_path),
                    reason: e.to_string(),
                })?;
                fh.finish().to_string()
            }
            Kind::Symlink => tree.read_link(src_path)?,
            _ => String::new(),
        };
        let owners = if keeps_owners {
            format!("{}:{}", meta.uid, meta.gid)
        } else {
            String::new()
        };
        record(&[
            b"entry",
            join(rel).as_bytes(),
            format!(
                "{:?} {:o} {} {}",
                meta.kind, meta.mode, meta.size, meta.rdev
            )
            .as_bytes(),
            owners.as_bytes(),
            content.as_bytes(),
        ]);
        Ok(())
    };
    for m in &matches {
        record(&[b"match", m.name.as_bytes()]);
        entry(&m.path, &[], &m.meta)?;
        if m.meta.kind == Kind::Dir {
            walk(src, &m.path, &mut entry)?;
        }
    }
    Ok(h.into_inner().finish())
}
