//! `GitFs`: the read-only filesystem over one ref or over every tag.
//!
//! The inner functions (`lookup`, `getattr`, `readdir`, `read`, ...) are pure
//! enough to unit-test without mounting: they take inode numbers and return
//! `Result<_, FsError>`. What the kernel gets for each request, reply or
//! errno, refusals included, is decided once, in `answers`, and both
//! transports (`fuser_adapter` through /dev/fuse, `ring` through io_uring)
//! only carry it.
//!
//! Kernel caching: `open`/`opendir` answer `ENOSYS`, so the kernel stops sending
//! OPEN/RELEASE and keeps page and directory caches across opens; `flush` is not
//! implemented; entry and attribute TTLs are long because a tree never changes.
//! Only the all-tags root and its children get a short TTL, so new or moved tags
//! show up without a remount.
//!
//! Cold walks: READDIRPLUS hands the kernel every entry's attributes with the
//! listing (no LOOKUP per entry), and a read that misses the object cache, or
//! a listing that follows reads, has the read-ahead policy (`readahead`) ask the
//! prefetcher to inflate the directory's next files on another thread and
//! store them straight into the kernel's page cache (FUSE notify-store), so
//! most files never cost a READ round trip at all.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use fuser::{FileAttr, FileType};
use git2::Oid;
use tracing::debug;

use crate::attr::{file_attr, kind_and_perm};
use crate::cache::{Cached, ObjectCache};
use crate::error::{FsError, Result};
use crate::inode::{child_data, Ino, InodeTable, NodeData, NodeKind};
use crate::prefetch::{PagePusher, Prefetcher};
use crate::readahead::ReadAhead;
use crate::store::{EntryKind, GitStore, Resolved, TreeEntry};
use crate::tags::{latest_data, newest, tag_data, TagSource, LATEST};

#[cfg(test)]
mod tests;

/// TTL for everything inside a tree: a tree never changes.
pub const LONG_TTL: Duration = Duration::from_secs(24 * 3600);
/// TTL for the all-tags root and its children, which change as tags come and go.
pub const SHORT_TTL: Duration = Duration::from_secs(1);
/// Size reported for directories.
const DIR_SIZE: u64 = 4096;

/// What a mount shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// One tree: a tag, a branch or a commit id.
    Ref(String),
    /// Every tag side by side, plus `latest`.
    AllTags,
}

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

    /// Where the mount puts a descriptor of the session's connection,
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

    /// Whether the kernel may cache symlink targets: those of one tree never
    /// change, the all-tags view's `latest` does.
    pub fn symlinks_stay(&self) -> bool {
        self.tags.is_none()
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

    /// At the first READDIRPLUS of directory `ino`: if the reader read files
    /// since the last listing, it is walking and reading everything, so start
    /// on this directory's files before its first read. A stat-only walk
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

impl Drop for GitFs {
    fn drop(&mut self) {
        debug!(
            reads = self.ahead.reads(),
            inflated_by_reads = self.misses.load(Ordering::Relaxed),
            "filesystem done"
        );
    }
}
