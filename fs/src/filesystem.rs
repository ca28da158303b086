//! `GitFs`: the read-only filesystem over one ref or over every tag.
//!
//! The inner functions (`lookup`, `getattr`, `readdir`, `read`, ...) are pure
//! enough to unit-test without mounting: they take inode numbers and return
//! `Result<_, FsError>`. The `fuser::Filesystem` impl at the bottom is a set of
//! thin adapters that turn those results into replies and log failures.
//!
//! Kernel caching: `open`/`opendir` answer `ENOSYS`, so the kernel stops sending
//! OPEN/RELEASE and keeps page and directory caches across opens; `flush` is not
//! implemented; entry and attribute TTLs are long because a tree never changes.
//! Only the all-tags root and its children get a short TTL, so new or moved tags
//! show up without a remount.
//!
//! Cold walks: READDIRPLUS hands the kernel every entry's attributes with the
//! listing (no LOOKUP per entry), and a read that misses the object cache, or
//! a listing that follows reads, has the read-ahead policy (`readahead`) ask
//! the prefetcher to inflate the directory's next files on another thread and
//! store them straight into the kernel's page cache (FUSE notify-store), so
//! most files never cost a READ round trip at all.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Generation, INodeNo,
    InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use git2::Oid;
use tracing::{debug, trace, warn};

use crate::attr::{file_attr, kind_and_perm};
use crate::cache::{Cached, ObjectCache};
use crate::error::{FsError, Result};
use crate::inode::{child_data, Ino, InodeTable, NodeData, NodeKind};
use crate::prefetch::{PagePusher, Prefetcher};
use crate::readahead::ReadAhead;
use crate::store::{EntryKind, GitStore, Resolved, TreeEntry};
use crate::tags::{latest_data, newest, tag_data, TagSource, LATEST};
use crate::wire::MAX_WRITE;
use crate::View;

#[cfg(test)]
mod tests;

/// TTL for everything inside a tree: a tree never changes.
pub const LONG_TTL: Duration = Duration::from_secs(24 * 3600);
/// TTL for the all-tags root and its children, which change as tags come and go.
pub const SHORT_TTL: Duration = Duration::from_secs(1);
/// Size reported for directories.
const DIR_SIZE: u64 = 4096;

/// One directory entry as `readdir` yields it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirItem<'a> {
    /// Its inode.
    pub ino: Ino,
    /// The offset of the entry after it.
    pub next: u64,
    /// Its type.
    pub kind: FileType,
    /// Its name.
    pub name: &'a [u8],
}

/// The children of a directory, in listing order.
enum Children {
    /// A tree's entries (shared with the object cache) and the commit time.
    Tree(Arc<[TreeEntry]>, i64),
    /// A built list (the all-tags root; a submodule's empty one).
    Listed(Vec<(Box<[u8]>, NodeData)>),
}

impl Children {
    fn len(&self) -> usize {
        match self {
            Children::Tree(t, _) => t.len(),
            Children::Listed(l) => l.len(),
        }
    }

    /// Entry `i` (< `len()`).
    fn get(&self, i: usize) -> (&[u8], NodeData) {
        match self {
            Children::Tree(t, time) => (&t[i].name, child_data(&t[i], *time)),
            Children::Listed(l) => (&l[i].0, l[i].1),
        }
    }
}

/// The read-only filesystem.
pub struct GitFs {
    store: GitStore,
    cache: Arc<ObjectCache>,
    inodes: Arc<Mutex<InodeTable>>,
    /// When to have the prefetcher read which files, and what it was asked.
    ahead: ReadAhead,
    /// Set once mounted: how the prefetcher stores pages into the kernel.
    pages: Arc<OnceLock<PagePusher>>,
    /// Reads that had to inflate the blob themselves.
    misses: AtomicU64,
    /// `Some` in the all-tags view.
    tags: Option<Arc<TagSource>>,
    /// The resolved ref in the single-ref view.
    resolved: Option<Resolved>,
}

impl std::fmt::Debug for GitFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitFs")
            .field("store", &self.store)
            .field("resolved", &self.resolved)
            .finish()
    }
}

impl GitFs {
    /// A filesystem for `view` of `store`, with an object cache of `cache_bytes`.
    /// The ref is resolved here: an unknown ref fails before anything is mounted.
    pub fn new(store: GitStore, view: &View, cache_bytes: u64) -> Result<GitFs> {
        let (root, resolved, tags) = match view {
            View::Ref(name) => {
                let r = store.resolve(name)?;
                let root = NodeData {
                    oid: r.tree,
                    kind: NodeKind::Entry(EntryKind::Tree),
                    time: r.time,
                };
                (root, Some(r), None)
            }
            View::AllTags => {
                let source = Arc::new(TagSource::new(store.path())?);
                let root = NodeData {
                    oid: Oid::ZERO_SHA1,
                    kind: NodeKind::TagsRoot,
                    time: 0,
                };
                (root, None, Some(source))
            }
        };
        let cache = Arc::new(ObjectCache::new(cache_bytes));
        let pages = Arc::new(OnceLock::new());
        let inodes = Arc::new(Mutex::new(InodeTable::new(root)));
        let prefetch =
            Prefetcher::spawn(store.path(), cache.clone(), pages.clone(), inodes.clone())?;
        Ok(GitFs {
            store,
            ahead: ReadAhead::new(Some(prefetch), cache.clone(), inodes.clone()),
            cache,
            pages,
            misses: AtomicU64::new(0),
            inodes,
            tags,
            resolved,
        })
    }

    /// The resolved ref in the single-ref view.
    pub fn resolved(&self) -> Option<Resolved> {
        self.resolved
    }

    /// Where [`crate::mount`] puts a descriptor of the session's connection,
    /// through which the prefetcher stores file contents straight into the
    /// kernel's page cache.
    pub fn page_pusher(&self) -> Arc<OnceLock<PagePusher>> {
        self.pages.clone()
    }

    /// The object cache (for statistics).
    pub fn cache(&self) -> &ObjectCache {
        &self.cache
    }

    /// The number of live inodes.
    pub fn inode_count(&self) -> usize {
        self.inodes().len()
    }

    fn inodes(&self) -> MutexGuard<'_, InodeTable> {
        // Every table operation completes before it returns; a panic in another
        // request cannot leave it half-changed.
        self.inodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn node(&self, ino: Ino) -> Result<(NodeData, Ino, Option<u64>)> {
        let n = self.inodes().get(ino).ok_or(FsError::UnknownInode(ino.0))?;
        Ok((n.data, n.parent, n.size))
    }

    /// The current tags (all-tags view), re-read if the refs changed on disk.
    /// Returns an empty list in the single-ref view.
    pub fn current_tags(&self) -> Result<Arc<Vec<(String, Resolved)>>> {
        match &self.tags {
            Some(source) => source.current(),
            None => Ok(Arc::new(Vec::new())),
        }
    }

    /// The tag source of the all-tags view.
    pub fn tag_source(&self) -> Option<Arc<TagSource>> {
        self.tags.clone()
    }

    /// A counter that changes whenever the tag list does (0 for one ref).
    pub fn tags_generation(&self) -> u64 {
        self.tags.as_ref().map_or(0, |t| t.generation())
    }

    fn tree(&self, oid: Oid) -> Result<Arc<[TreeEntry]>> {
        self.cache.tree(oid, || self.store.read_tree(oid))
    }

    fn blob(&self, oid: Oid) -> Result<Arc<[u8]>> {
        self.cache.blob(oid, || self.store.read_blob(oid))
    }

    /// The children of a directory node, in a stable order. A tree is shared
    /// with the cache, not copied, so paging through a huge directory costs
    /// no more per call than the entries it returns.
    fn children(&self, ino: Ino, data: NodeData) -> Result<Children> {
        match data.kind {
            NodeKind::Entry(EntryKind::Tree) => Ok(Children::Tree(self.tree(data.oid)?, data.time)),
            NodeKind::Entry(EntryKind::Submodule) => Ok(Children::Listed(Vec::new())),
            NodeKind::TagsRoot => {
                let tags = self.current_tags()?;
                let mut out: Vec<_> = tags
                    .iter()
                    .filter(|(name, _)| name != LATEST)
                    .map(|(name, r)| (name.as_bytes().into(), tag_data(r)))
                    .collect();
                if let Some((_, r)) = newest(&tags) {
                    out.push((LATEST.as_bytes().into(), latest_data(r.time)));
                }
                Ok(Children::Listed(out))
            }
            NodeKind::Entry(_) | NodeKind::Latest => Err(FsError::NotDir(ino.0)),
        }
    }

    /// The child `name` of directory node `data`, without touching the table.
    fn find_child(&self, parent: Ino, data: NodeData, name: &[u8]) -> Result<NodeData> {
        let not_found = || FsError::NotFound {
            parent: parent.0,
            name: String::from_utf8_lossy(name).into_owned(),
        };
        match data.kind {
            NodeKind::Entry(EntryKind::Tree) => {
                let tree = self.tree(data.oid)?;
                let i = tree
                    .binary_search_by(|e| (*e.name).cmp(name))
                    .map_err(|_| not_found())?;
                Ok(child_data(&tree[i], data.time))
            }
            NodeKind::Entry(EntryKind::Submodule) => Err(not_found()),
            NodeKind::TagsRoot => {
                let tags = self.current_tags()?;
                if name == LATEST.as_bytes() {
                    return newest(&tags)
                        .map(|(_, r)| latest_data(r.time))
                        .ok_or_else(not_found);
                }
                tags.iter()
                    .find(|(n, _)| n.as_bytes() == name)
                    .map(|(_, r)| tag_data(r))
                    .ok_or_else(not_found)
            }
            NodeKind::Entry(_) | NodeKind::Latest => Err(FsError::NotDir(parent.0)),
        }
    }

    /// The size of a node, reading the blob header on first need.
    fn size_of(&self, ino: Ino, data: NodeData, known: Option<u64>) -> Result<u64> {
        if let Some(s) = known {
            return Ok(s);
        }
        let size = match data.kind {
            NodeKind::Entry(EntryKind::File | EntryKind::Exec | EntryKind::Symlink) => {
                match self.cache.blob_len(&data.oid) {
                    Some(len) => len as u64,
                    None => self.store.blob_size(data.oid)?,
                }
            }
            NodeKind::Latest => self.latest_target()?.len() as u64,
            _ => return Ok(DIR_SIZE),
        };
        if !matches!(data.kind, NodeKind::Latest) {
            self.inodes().set_size(ino, size);
        }
        Ok(size)
    }

    fn latest_target(&self) -> Result<Vec<u8>> {
        let tags = self.current_tags()?;
        newest(&tags)
            .map(|(n, _)| n.as_bytes().to_vec())
            .ok_or(FsError::NotFound {
                parent: Ino::ROOT.0,
                name: LATEST.into(),
            })
    }

    fn root_time(&self, data: NodeData) -> Result<i64> {
        if data.kind == NodeKind::TagsRoot {
            let tags = self.current_tags()?;
            return Ok(newest(&tags).map_or(0, |(_, r)| r.time));
        }
        Ok(data.time)
    }

    /// The TTL for an inode: short at the top of the all-tags view.
    pub fn ttl(&self, ino: Ino, parent: Ino) -> Duration {
        if self.tags.is_some() && (ino == Ino::ROOT || parent == Ino::ROOT) {
            SHORT_TTL
        } else {
            LONG_TTL
        }
    }

    /// Look up `name` in `parent`, counting one kernel lookup.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<FileAttr> {
        let (pdata, _, _) = self.node(parent)?;
        let data = self.find_child(parent, pdata, name.as_bytes())?;
        self.counted_attr(parent, name.as_bytes(), &data)
    }

    /// The attributes of child `name` of `parent`, adding one kernel lookup of
    /// it (a `lookup` or a `readdirplus` entry). If the size cannot be read,
    /// the lookup is not counted.
    fn counted_attr(&self, parent: Ino, name: &[u8], data: &NodeData) -> Result<FileAttr> {
        let (ino, known) = {
            let mut t = self.inodes();
            let ino = t.child(parent, name, data);
            (ino, t.get(ino).and_then(|n| n.size))
        };
        match self.size_of(ino, *data, known) {
            Ok(size) => Ok(file_attr(ino, data.kind, size, data.time)),
            Err(e) => {
                self.inodes().forget(ino, 1);
                Err(e)
            }
        }
    }

    /// The attributes of `ino`.
    pub fn getattr(&self, ino: Ino) -> Result<FileAttr> {
        let (data, _, known) = self.node(ino)?;
        let size = self.size_of(ino, data, known)?;
        Ok(file_attr(ino, data.kind, size, self.root_time(data)?))
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        let shrank = self.inodes().forget(ino, n);
        if shrank {
            release_free_memory();
        }
    }

    /// The target of a symlink.
    pub fn readlink(&self, ino: Ino) -> Result<Arc<[u8]>> {
        let (data, _, _) = self.node(ino)?;
        match data.kind {
            NodeKind::Entry(EntryKind::Symlink) => self.blob(data.oid),
            NodeKind::Latest => Ok(self.latest_target()?.into()),
            _ => Err(FsError::NotSymlink(ino.0)),
        }
    }

    /// Up to `size` bytes of a file from `offset`: the blob and the range in it.
    pub fn read(
        &self,
        ino: Ino,
        offset: u64,
        size: u32,
    ) -> Result<(Arc<[u8]>, std::ops::Range<usize>)> {
        let (data, parent, _) = self.node(ino)?;
        match data.kind {
            NodeKind::Entry(EntryKind::File | EntryKind::Exec | EntryKind::Symlink) => {}
            _ => return Err(FsError::IsDir(ino.0)),
        }
        self.ahead.count_read();
        let blob = match self.cache.get(&data.oid) {
            Some(Cached::Blob(b)) => b,
            _ => self.inflate(data.oid)?,
        };
        if offset == 0 {
            // The page was not stored in time (or never asked for): have the
            // following files stored, unless that is already under way.
            self.ahead.after_read(parent, data.oid);
        }
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(blob.len());
        let end = start.saturating_add(size as usize).min(blob.len());
        Ok((blob, start..end))
    }

    /// A blob the cache does not have: inflate it, unless the prefetcher is
    /// inflating it right now, in which case wait for its result (the two
    /// otherwise march through a directory in step, both inflating each file).
    fn inflate(&self, oid: Oid) -> Result<Arc<[u8]>> {
        match self.cache.claim(oid) {
            Some(_claim) => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                let b = self.store.read_blob(oid)?;
                self.cache.insert(oid, Cached::Blob(b.clone()));
                Ok(b)
            }
            None => {
                self.cache.wait_for(oid);
                match self.cache.get(&oid) {
                    Some(Cached::Blob(b)) => Ok(b),
                    // It failed there, or did not fit the budget: do it here.
                    _ => self.store.read_blob(oid),
                }
            }
        }
    }

    /// List `ino` from `offset`, calling `add` per entry until it returns true
    /// (the reply buffer is full). Offsets: 0 is `.`, 1 is `..`, then children.
    pub fn readdir(
        &self,
        ino: Ino,
        offset: u64,
        mut add: impl FnMut(DirItem) -> bool,
    ) -> Result<()> {
        let (data, parent, _) = self.node(ino)?;
        if !data.kind.is_dir() {
            return Err(FsError::NotDir(ino.0));
        }
        let children = self.children(ino, data)?;
        let total = 2 + children.len() as u64;
        // Plain readdir creates no records: d_ino is the number a lookup
        // would give, derived from the path.
        let table = self.inodes();
        for off in offset..total {
            let item = match off {
                0 | 1 => DirItem {
                    ino: if off == 0 { ino } else { parent },
                    next: off + 1,
                    kind: FileType::Directory,
                    name: if off == 0 { &b"."[..] } else { &b".."[..] },
                },
                _ => {
                    let (name, cdata) = children.get((off - 2) as usize);
                    DirItem {
                        ino: table.peek(ino, name, &cdata),
                        next: off + 1,
                        kind: kind_and_perm(cdata.kind).0,
                        name,
                    }
                }
            };
            if add(item) {
                break;
            }
        }
        Ok(())
    }

    /// List `ino` from `offset` with each entry's attributes (READDIRPLUS),
    /// calling `add` per entry until it returns true (the reply is full). The
    /// kernel takes a reference on every entry but `.` and `..`, so each one
    /// added counts a lookup; an entry that did not fit is uncounted again.
    pub fn readdirplus(
        &self,
        ino: Ino,
        offset: u64,
        mut add: impl FnMut(DirItem, &FileAttr, Duration) -> bool,
    ) -> Result<()> {
        let (data, parent, known) = self.node(ino)?;
        if !data.kind.is_dir() {
            return Err(FsError::NotDir(ino.0));
        }
        let children = self.children(ino, data)?;
        if offset == 0 {
            // Before the attributes are computed, so the prefetcher is already
            // on the first files when the reader gets the listing.
            self.ahead.at_listing(ino);
        }
        let total = 2 + children.len() as u64;
        for off in offset..total {
            if off < 2 {
                // The kernel ignores the attributes of the dots; send the
                // directory's own.
                let attr = file_attr(
                    ino,
                    data.kind,
                    self.size_of(ino, data, known)?,
                    self.root_time(data)?,
                );
                let item = DirItem {
                    ino: if off == 0 { ino } else { parent },
                    next: off + 1,
                    kind: FileType::Directory,
                    name: if off == 0 { &b"."[..] } else { &b".."[..] },
                };
                if add(item, &attr, Duration::ZERO) {
                    break;
                }
                continue;
            }
            let (name, cdata) = children.get((off - 2) as usize);
            let attr = self.counted_attr(ino, name, &cdata)?;
            let cino = Ino(attr.ino.0);
            let item = DirItem {
                ino: cino,
                next: off + 1,
                kind: attr.kind,
                name,
            };
            if add(item, &attr, self.ttl(cino, ino)) {
                self.inodes().forget(cino, 1);
                break;
            }
        }
        Ok(())
    }

    /// Extended attributes: there are none, but the inode must exist.
    pub fn getxattr(&self, ino: Ino) -> Result<()> {
        self.node(ino)?;
        Err(FsError::NoAttr)
    }

    pub(crate) fn reply_err(&self, op: &str, ino: u64, err: &FsError) -> Errno {
        let errno = err.errno();
        if errno == Errno::ENOENT {
            trace!(op, ino, error = %err, "not found");
        } else if err.is_expected() {
            debug!(op, ino, error = %err, "refused");
        } else {
            warn!(op, ino, error = %format!("{:#}", ErrChain(err)), "failed, answering EIO");
        }
        errno
    }
}

/// Hand freed heap pages back to the system. glibc keeps a freed table that
/// sat in an arena (rather than its own mapping) resident; after the kernel
/// forgot a large part of the tree this makes the drop show in the RSS.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim only walks and trims the allocator's own free
        // lists; it has no preconditions.
        unsafe { libc::malloc_trim(0) };
        debug!("inode table shrank, freed memory released");
    }
}

/// Displays an error with its sources, `a: b: c`.
struct ErrChain<'a>(&'a FsError);

impl std::fmt::Display for ErrChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = std::error::Error::source(self.0);
        while let Some(s) = src {
            write!(f, ": {s}")?;
            src = s.source();
        }
        Ok(())
    }
}

impl Drop for GitFs {
    fn drop(&mut self) {
        debug!(
            reads = self.ahead.reads(),
            inflated_by_reads = self.misses.load(Ordering::Relaxed),
            "filesystem done"
        );
    }
}

/// The filesystem as fuser serves it: the [`GitFs`], shared with the io_uring
/// queue threads, and whether to ask the kernel for FUSE over io_uring.
#[derive(Debug)]
pub struct Served {
    fs: Arc<GitFs>,
    /// Set when queue threads stand ready; true after INIT if the kernel
    /// agreed to send requests through them.
    uring: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Served {
    /// Serve `fs`; with `uring`, ask for FUSE over io_uring at INIT and record
    /// there whether the kernel agreed.
    pub fn new(fs: Arc<GitFs>, uring: Option<Arc<std::sync::atomic::AtomicBool>>) -> Served {
        Served { fs, uring }
    }
}

/// The fuser adapters: each turns an inner result into a reply.
impl fuser::Filesystem for Served {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // READDIRPLUS answers a listing with every entry's attributes, so a
        // walk that stats what it lists (find, tar, portage's cache checks)
        // makes one request per directory batch instead of one per entry;
        // AUTO lets the kernel fall back to plain readdir for a bare `ls`.
        // PARALLEL_DIROPS lets parallel builds look up in one directory at
        // once. Symlinks of one immutable tree may be cached; the all-tags
        // view's `latest` changes, so it does not ask for that.
        let mut wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS;
        if self.fs.tags.is_none() {
            wanted |= InitFlags::FUSE_CACHE_SYMLINKS;
        }
        let have = config.capabilities();
        // FUSE over io_uring: each CPU gets a queue served by a thread pinned
        // to it, so a request is answered on the CPU that made it instead of
        // waking a daemon thread on another one (see `ring`).
        if let Some(flag) = &self.uring {
            let agreed = have.contains(InitFlags::FUSE_OVER_IO_URING);
            if agreed {
                wanted |= InitFlags::FUSE_OVER_IO_URING;
            }
            flag.store(agreed, Ordering::SeqCst);
        }
        if let Err(missing) = config.add_capabilities(wanted & have) {
            debug!(?missing, "kernel lacks some FUSE capabilities");
        }
        let _ = config.set_max_write(MAX_WRITE);
        debug!(requested = ?(wanted & have), "FUSE capabilities");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        trace!(parent = parent.0, ?name, "lookup");
        match self.fs.lookup(Ino(parent.0), name) {
            Ok(attr) => reply.entry(
                &self.fs.ttl(Ino(attr.ino.0), Ino(parent.0)),
                &attr,
                Generation(0),
            ),
            Err(e) => reply.error(self.fs.reply_err("lookup", parent.0, &e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        trace!(ino = ino.0, nlookup, "forget");
        GitFs::forget(&self.fs, Ino(ino.0), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        trace!(ino = ino.0, "getattr");
        match self.fs.getattr(Ino(ino.0)) {
            Ok(attr) => {
                let parent = self.fs.node(Ino(ino.0)).map_or(Ino::ROOT, |n| n.1);
                reply.attr(&self.fs.ttl(Ino(ino.0), parent), &attr)
            }
            Err(e) => reply.error(self.fs.reply_err("getattr", ino.0, &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        trace!(ino = ino.0, "readlink");
        match self.fs.readlink(Ino(ino.0)) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(self.fs.reply_err("readlink", ino.0, &e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // ENOSYS makes the kernel stop sending OPEN and keep the page cache across
        // opens (DESIGN.md: 1.0x native warm reads instead of 2-6x).
        trace!(ino = ino.0, "open: ENOSYS");
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        trace!(ino = ino.0, "opendir: ENOSYS");
        reply.error(Errno::ENOSYS);
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever written. ENOSYS here, rather than fuser's default
        // (which also logs a warning), makes the kernel stop sending FLUSH on
        // every close(2) for the rest of the mount.
        trace!(ino = ino.0, "flush: ENOSYS");
        reply.error(Errno::ENOSYS);
    }

    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // Python's open() asks whether every file is a terminal (TCGETS):
        // "not a terminal", quietly, as any regular file answers. fuser's
        // default logs a warning per call, thousands in a world rebuild.
        trace!(ino = ino.0, cmd, "ioctl: ENOTTY");
        reply.error(Errno::ENOTTY);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        trace!(ino = ino.0, offset, size, "read");
        match self.fs.read(Ino(ino.0), offset, size) {
            Ok((blob, range)) => reply.data(&blob[range]),
            Err(e) => reply.error(self.fs.reply_err("read", ino.0, &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        trace!(ino = ino.0, offset, "readdir");
        let res = self.fs.readdir(Ino(ino.0), offset, |it| {
            reply.add(
                INodeNo(it.ino.0),
                it.next,
                it.kind,
                OsStr::from_bytes(it.name),
            )
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fs.reply_err("readdir", ino.0, &e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        trace!(ino = ino.0, offset, "readdirplus");
        let res = self.fs.readdirplus(Ino(ino.0), offset, |it, attr, ttl| {
            reply.add(
                INodeNo(it.ino.0),
                it.next,
                OsStr::from_bytes(it.name),
                &ttl,
                attr,
                Generation(0),
            )
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fs.reply_err("readdirplus", ino.0, &e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        trace!("statfs");
        let files = self.fs.inode_count() as u64;
        reply.statfs(
            0,
            0,
            0,
            files,
            0,
            crate::attr::BLOCK_SIZE,
            255,
            crate::attr::BLOCK_SIZE,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, _size: u32, reply: ReplyXattr) {
        trace!(ino = ino.0, ?name, "getxattr");
        if let Err(e) = self.fs.getxattr(Ino(ino.0)) {
            reply.error(self.fs.reply_err("getxattr", ino.0, &e));
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        trace!(ino = ino.0, "listxattr");
        match self.fs.node(Ino(ino.0)) {
            Ok(_) if size == 0 => reply.size(0),
            Ok(_) => reply.data(&[]),
            Err(e) => reply.error(self.fs.reply_err("listxattr", ino.0, &e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        trace!(ino = ino.0, %mask, "access");
        match self.fs.node(Ino(ino.0)) {
            Ok(_) if mask.contains(AccessFlags::W_OK) => reply.error(Errno::EROFS),
            Ok(_) => reply.ok(),
            Err(e) => reply.error(self.fs.reply_err("access", ino.0, &e)),
        }
    }

    // Every modification: EROFS. The `ro` mount option stops most of these in the
    // VFS already; these answer whatever still gets through.

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        trace!(ino = ino.0, "setattr: EROFS");
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        trace!(parent = parent.0, "mknod: EROFS");
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        trace!(parent = parent.0, "mkdir: EROFS");
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        trace!(parent = parent.0, "unlink: EROFS");
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        trace!(parent = parent.0, "rmdir: EROFS");
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        trace!(parent = parent.0, "symlink: EROFS");
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        trace!(parent = parent.0, "rename: EROFS");
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        trace!(ino = ino.0, "link: EROFS");
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        trace!(ino = ino.0, "write: EROFS");
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        trace!(parent = parent.0, "create: EROFS");
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        trace!(ino = ino.0, "setxattr: EROFS");
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        trace!(ino = ino.0, "removexattr: EROFS");
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        trace!(ino = ino.0, "fallocate: EROFS");
        reply.error(Errno::EROFS);
    }
}
