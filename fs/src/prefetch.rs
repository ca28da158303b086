//! `Prefetcher`: reads the next files of a directory into the object cache on
//! a background thread while the reader is still busy with the current one.
//!
//! A cold walk (portage's cache regeneration, `tar`, the benchmark) reads a
//! directory's files in listing order, one FUSE round trip each, so every
//! `read` used to wait for libgit2 to inflate the blob and its delta chain.
//! When a read misses the cache, the filesystem asks for the following files
//! of the same directory; this thread inflates them with its own repository
//! handle and, once mounted, stores each into the kernel's page cache of its
//! inode (FUSE notify-store). The reader's next `read` then finds the page
//! cached and sends no request at all: on a VM where each request costs a
//! cross-CPU wakeup, that round trip, not the inflating, was most of a cold
//! read. Nothing is prefetched until something is read, so `ls -l` or a
//! stat-only walk costs nothing extra. Requests never block a FUSE thread: a
//! full queue drops them.
//!
//! When it has nothing else to do, the thread reads ahead of a walk
//! ([`Lookahead`]): from the directory the reader listed last, the files it
//! will come to next in listing order, into the object cache. The kernel
//! holds no inode for those yet, so their pages are stored later, from the
//! cache, by the window asked for at their listing. The stores stay on this
//! thread: a store waits for the page lock, which a reader holds while its
//! READ is pending, so a thread that answers requests must never store (it
//! deadlocked the parallel-readers test when one did).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use git2::Oid;
use tracing::{debug, trace};

use crate::cache::{Cached, ObjectCache};
use crate::error::{FsError, Result};
use crate::inode::{Ino, InodeTable};
use crate::store::{EntryKind, GitStore, TreeEntry};
use crate::wire::notify_store_head;

/// Files asked for per cache miss.
pub const WINDOW: usize = 128;
/// Blobs larger than this are left for the reader: prefetching them could
/// push out of the cache what is about to be read.
const MAX_BLOB: u64 = 256 << 10;
/// Queued requests; more are dropped.
const QUEUE: usize = 16;
/// How many files the look-ahead may inflate beyond the reader's last listing.
const AHEAD_FILES: u64 = 1024;
/// How long refused page stores are retried.
const RETRY_FOR: Duration = Duration::from_millis(10);

/// Stores file contents into the kernel's page cache (FUSE_NOTIFY_STORE)
/// through its own descriptor of the mount's /dev/fuse connection.
///
/// fuser's `Notifier::store` answers Ok when the kernel says ENOENT (it
/// treats a store like an invalidation, for which a missing inode is fine),
/// but for a store ENOENT means nothing was stored: the kernel does not hold
/// the inode yet, because the reader has not parsed the listing that
/// introduces it. That is the usual case for the first files of a directory,
/// and the store must then be tried again, so it has to be seen.
#[derive(Debug)]
pub struct PagePusher(std::fs::File);

impl PagePusher {
    /// `dev`: a descriptor of the mount's /dev/fuse connection (a dup of the
    /// session's is fine: notifications are not tied to a reader).
    pub fn new(dev: std::os::fd::OwnedFd) -> PagePusher {
        PagePusher(std::fs::File::from(dev))
    }

    /// Store `data` as the contents of inode `ino` from offset 0; an error
    /// (ENOENT: the kernel holds no such inode) means nothing was stored.
    pub fn store(&self, ino: Ino, data: &[u8]) -> std::io::Result<()> {
        use std::io::{IoSlice, Write};
        let size = u32::try_from(data.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "store too large")
        })?;
        let head = notify_store_head(ino.0, size);
        let written = (&self.0).write_vectored(&[IoSlice::new(&head), IoSlice::new(data)])?;
        if written != head.len() + data.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "short write of a page store",
            ));
        }
        Ok(())
    }
}

/// What the filesystem asks of the thread.
#[derive(Debug)]
enum Job {
    /// Inflate these files (object id, inode) and store them in the kernel.
    Files(Vec<(Oid, Ino)>),
    /// The reader listed this tree: look ahead from there.
    Listed(Oid),
}

/// The background reader. Dropping it stops and joins the thread.
#[derive(Debug)]
pub struct Prefetcher {
    tx: Option<SyncSender<Job>>,
    handle: Option<JoinHandle<()>>,
}

impl Prefetcher {
    /// Start the thread over its own handle on `git_dir`, filling `cache` and,
    /// once `pages` is set, the kernel's page cache.
    /// Stores go only to inodes `inodes` holds for the very blob stored.
    pub fn spawn(
        git_dir: &Path,
        cache: Arc<ObjectCache>,
        pages: Arc<OnceLock<PagePusher>>,
        inodes: Arc<Mutex<InodeTable>>,
    ) -> Result<Prefetcher> {
        let store = GitStore::open(git_dir)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let handle = std::thread::Builder::new()
            .name("portroot-prefetch".into())
            .spawn(move || run(&store, &cache, &pages, &inodes, &rx))
            .map_err(|source| FsError::Io {
                what: "starting the prefetch thread for",
                path: git_dir.to_owned(),
                source,
            })?;
        Ok(Prefetcher {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// Ask for the blobs of these files (object id, inode) to be read; false
    /// if the queue is full (the request is dropped).
    pub fn request(&self, oids: Vec<(Oid, Ino)>) -> bool {
        self.send(Job::Files(oids))
    }

    /// Tell the thread the reader listed `tree` while reading everything: it
    /// then inflates, when it has nothing else to do, the files the reader
    /// will come to next (see [`Lookahead`]). False if the queue is full.
    pub fn listed(&self, tree: Oid) -> bool {
        self.send(Job::Listed(tree))
    }

    fn send(&self, job: Job) -> bool {
        let Some(tx) = &self.tx else {
            return false;
        };
        match tx.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                trace!("prefetch queue full, request dropped");
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(
    store: &GitStore,
    cache: &ObjectCache,
    pages: &OnceLock<PagePusher>,
    inodes: &Mutex<InodeTable>,
    rx: &Receiver<Job>,
) {
    let mut counts = Counts::default();
    let mut ahead = Lookahead::default();
    let mut stores = Stores {
        pages,
        inodes,
        pending: VecDeque::new(),
        stored: 0,
        retried: 0,
        expired: 0,
    };
    // The look-ahead keeps to a quarter of the budget.
    let ahead_bytes = (cache.budget() / 4) as u64;
    loop {
        let job = match rx.try_recv() {
            Ok(job) => job,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                if stores.retry() {
                    // Give the reader a moment to parse its listing.
                    std::thread::yield_now();
                    continue;
                }
                if ahead.step(store, cache, ahead_bytes, &mut counts) {
                    continue;
                }
                match rx.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            }
        };
        match job {
            Job::Files(oids) => files(store, cache, &mut stores, oids, &mut counts),
            Job::Listed(tree) => ahead.listed(tree, store, cache),
        }
    }
    debug!(
        blobs = counts.read,
        ahead = counts.ahead,
        bytes = counts.bytes,
        stored = stores.stored,
        retried = stores.retried,
        refused = stores.expired,
        "prefetch thread done"
    );
}

/// What the thread inflated, for the log.
#[derive(Debug, Default)]
struct Counts {
    /// Blobs inflated (on request and looking ahead).
    read: u64,
    /// Of those, inflated looking ahead.
    ahead: u64,
    bytes: u64,
}

/// Page stores into the kernel, and those it refused for now.
struct Stores<'a> {
    pages: &'a OnceLock<PagePusher>,
    inodes: &'a Mutex<InodeTable>,
    /// Refused stores in listing order, each retried until its deadline.
    pending: VecDeque<(Oid, Ino, Arc<[u8]>, Instant)>,
    stored: u64,
    /// Stores that needed a retry, and those given up.
    retried: u64,
    expired: u64,
}

impl Stores<'_> {
    /// Store `blob` as the content of inode `ino`, or keep it to retry.
    ///
    /// Only into an inode the table holds for exactly this blob: a record
    /// exists only while the kernel holds the inode, and the check makes a
    /// stale or (56-bit hash) colliding number harmless. The window is asked
    /// for while the listing is being answered, and the kernel takes the
    /// inodes in only once the reader has parsed the reply, so the first try
    /// often comes too early: the store is then retried between other work
    /// for [`RETRY_FOR`].
    fn store(&mut self, oid: Oid, ino: Ino, blob: Arc<[u8]>) {
        // Behind refused ones, this one would be refused too: queue it.
        if !self.pending.is_empty() || !self.try_store(oid, ino, &blob) {
            self.pending
                .push_back((oid, ino, blob, Instant::now() + RETRY_FOR));
        }
    }

    /// True when stored, or when there is nothing to store or nowhere to.
    fn try_store(&mut self, oid: Oid, ino: Ino, blob: &Arc<[u8]>) -> bool {
        let Some(k) = self.pages.get().filter(|_| !blob.is_empty()) else {
            return true;
        };
        let record = self
            .inodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(ino)
            .map(|n| n.data.oid);
        match record {
            Some(o) if o == oid => match k.store(ino, blob) {
                Ok(()) => {
                    self.stored += 1;
                    true
                }
                Err(_) => false,
            },
            // Another blob there now: not ours to fill.
            Some(_) => true,
            None => false,
        }
    }

    /// Retry the pending stores in order, up to the first one still refused
    /// before its deadline: the kernel takes a listing's inodes in listing
    /// order, so the ones after it would be refused too, and each refusal
    /// costs a system call. True while some remain.
    fn retry(&mut self) -> bool {
        let now = Instant::now();
        while let Some((oid, ino, blob, deadline)) = self.pending.pop_front() {
            if self.try_store(oid, ino, &blob) {
                self.retried += 1;
            } else if now < deadline {
                self.pending.push_front((oid, ino, blob, deadline));
                break;
            } else {
                // The kernel does not hold the inode (any more); it will READ
                // the file if it needs it.
                self.expired += 1;
                trace!(ino = ino.0, "page store refused");
            }
        }
        !self.pending.is_empty()
    }
}

/// Inflate `oids` (those not cached yet) and store every one into the kernel.
fn files(
    store: &GitStore,
    cache: &ObjectCache,
    stores: &mut Stores<'_>,
    mut oids: Vec<(Oid, Ino)>,
    counts: &mut Counts,
) {
    // The reader reads the first file of the window right away, and a store
    // waits for the page lock its READ holds: storing it first would keep
    // this thread one step behind the reader for the whole window (each
    // store landing just after the READ it should have spared). Start one
    // file ahead instead, and store the first one last.
    if oids.len() > 1 {
        oids.rotate_left(1);
    }
    // Never fill more than an eighth of the budget per request, so a window
    // cannot evict the files read just before it.
    let per_request = cache.budget() / 8;
    let mut taken = 0;
    for (oid, ino) in oids {
        if taken >= per_request {
            break;
        }
        // Already inflated (by a reader, or looking ahead): only the
        // kernel's page is missing.
        if let Some(Cached::Blob(blob)) = cache.get(&oid) {
            stores.store(oid, ino, blob);
            continue;
        }
        stores.retry();
        let Some(blob) = inflate(store, cache, oid) else {
            continue;
        };
        taken += blob.len();
        counts.read += 1;
        counts.bytes += blob.len() as u64;
        stores.store(oid, ino, blob);
    }
}

/// Inflate blob `oid` into the cache, unless a reader is at it or it is
/// larger than [`MAX_BLOB`].
fn inflate(store: &GitStore, cache: &ObjectCache, oid: Oid) -> Option<Arc<[u8]>> {
    // A reader is inflating it itself.
    let claim = cache.claim(oid)?;
    match store.blob_size(oid) {
        Ok(size) if size <= MAX_BLOB => {}
        Ok(_) => return None,
        Err(e) => {
            debug!(%oid, error = %e, "prefetch: no blob header");
            return None;
        }
    }
    match store.read_blob(oid) {
        Ok(blob) => {
            cache.insert(oid, Cached::Blob(blob.clone()));
            drop(claim);
            Some(blob)
        }
        Err(e) => {
            debug!(%oid, error = %e, "prefetch: read failed");
            None
        }
    }
}

/// Reading ahead of a walk: a cursor over the listed tree in the order a
/// walk in listing order (find, tar, rsync, os.walk) reads it, files first
/// within each directory and subdirectories in order, inflating into the
/// object cache (the kernel holds no inode for them yet, so no page can be
/// stored; the window asked for at the listing stores them then, from the
/// cache). It stays at most [`AHEAD_FILES`] files and a quarter of the
/// budget ahead of the reader's last listing, and runs only when no request
/// waits. A listing the cursor has passed tells how far the reader got; any
/// other listing (a walk in another order) restarts the cursor there, so a
/// wrong guess costs at most one window.
#[derive(Debug, Default)]
struct Lookahead {
    /// Trees being walked, outermost first, with the next index in each.
    frames: Vec<(Arc<[TreeEntry]>, usize)>,
    /// Files and bytes the cursor has passed.
    seq: u64,
    bytes: u64,
    /// The cursor's (seq, bytes) when the reader last listed a tree it had
    /// passed.
    reader: (u64, u64),
    /// Trees the cursor entered, with its (seq, bytes) then.
    entered: HashMap<Oid, (u64, u64)>,
}

impl Lookahead {
    /// Trees remembered before the map is cleared.
    const ENTERED: usize = 1 << 16;

    fn listed(&mut self, tree: Oid, store: &GitStore, cache: &ObjectCache) {
        if let Some(&at) = self.entered.get(&tree) {
            self.reader = at;
            return;
        }
        self.frames.clear();
        self.entered.clear();
        self.reader = (self.seq, self.bytes);
        match cache.tree(tree, || store.read_tree(tree)) {
            Ok(t) => {
                self.entered.insert(tree, self.reader);
                self.frames.push((t, 0));
            }
            Err(e) => debug!(%tree, error = %e, "look-ahead: no tree"),
        }
    }

    /// Inflate the next file ahead; false when there is nothing to do.
    fn step(
        &mut self,
        store: &GitStore,
        cache: &ObjectCache,
        ahead_bytes: u64,
        counts: &mut Counts,
    ) -> bool {
        loop {
            if self.seq - self.reader.0 >= AHEAD_FILES || self.bytes - self.reader.1 >= ahead_bytes
            {
                return false;
            }
            let Some((tree, i)) = self.frames.last_mut() else {
                return false;
            };
            // Files of a directory first, then its subdirectories: a second
            // pass over the same tree, told apart by the index's high bit.
            const DIRS: usize = 1 << (usize::BITS - 1);
            let (pass_dirs, at) = (*i & DIRS != 0, *i & !DIRS);
            if at >= tree.len() {
                if pass_dirs {
                    self.frames.pop();
                } else {
                    *i = DIRS;
                }
                continue;
            }
            *i += 1;
            let (oid, kind) = (tree[at].oid, tree[at].kind);
            match (kind, pass_dirs) {
                (EntryKind::Tree, true) => match cache.tree(oid, || store.read_tree(oid)) {
                    Ok(t) => {
                        if self.entered.len() >= Self::ENTERED {
                            self.entered.clear();
                        }
                        self.entered.insert(oid, (self.seq, self.bytes));
                        self.frames.push((t, 0));
                    }
                    Err(e) => debug!(%oid, error = %e, "look-ahead: no tree"),
                },
                (EntryKind::File | EntryKind::Exec, false) => {
                    self.seq += 1;
                    if let Some(n) = cache.blob_len(&oid) {
                        self.bytes += n as u64;
                        continue;
                    }
                    if let Some(blob) = inflate(store, cache, oid) {
                        self.bytes += blob.len() as u64;
                        counts.read += 1;
                        counts.ahead += 1;
                        counts.bytes += blob.len() as u64;
                    }
                    return true;
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::fixture;

    #[test]
    fn requested_blobs_end_up_in_the_cache_and_drop_joins() {
        let dir = fixture();
        let git_dir = dir.path().join(".git");
        let store = GitStore::open(&git_dir).expect("open");
        let tree = store
            .read_tree(store.resolve("one").expect("one").tree)
            .expect("tree");
        let blobs: Vec<Oid> = tree
            .iter()
            .filter(|e| !e.kind.is_dir())
            .map(|e| e.oid)
            .collect();
        let cache = Arc::new(ObjectCache::new(1 << 20));
        let table = InodeTable::new(crate::inode::NodeData {
            oid: tree[0].oid,
            kind: crate::inode::NodeKind::Entry(crate::store::EntryKind::Tree),
            time: 0,
        });
        let p = Prefetcher::spawn(
            &git_dir,
            cache.clone(),
            Arc::new(OnceLock::new()),
            Arc::new(Mutex::new(table)),
        )
        .expect("spawn");
        // A tree id is not a blob: skipped, not fatal.
        let mut asked: Vec<(Oid, Ino)> = blobs.iter().map(|&o| (o, Ino(7))).collect();
        asked.push((tree[0].oid, Ino(8)));
        assert!(p.request(asked));
        drop(p); // joins after the queue is drained
        for oid in &blobs {
            assert!(cache.contains(oid), "{oid} prefetched");
        }
        assert!(!cache.contains(&tree[0].oid));
    }

    #[test]
    fn look_ahead_reads_files_first_then_subdirectories_and_follows_the_reader() {
        let dir = fixture();
        let store = GitStore::open(&dir.path().join(".git")).expect("open");
        let root = store.resolve("one").expect("one").tree;
        let cache = ObjectCache::new(1 << 20);
        let mut ahead = Lookahead::default();
        let mut counts = Counts::default();
        ahead.listed(root, &store, &cache);
        while ahead.step(&store, &cache, u64::MAX, &mut counts) {}
        // empty, run.sh (the root's files; the symlink is not read), then
        // a/b/file: three files passed, two inflated (the empty blob too).
        assert_eq!(ahead.seq, 3);
        let tree = store.read_tree(root).expect("root");
        let a = tree.iter().find(|e| &*e.name == b"a").expect("a").oid;
        let b = store.read_tree(a).expect("a")[0].oid;
        let file = store.read_tree(b).expect("b")[0].oid;
        assert!(cache.contains(&file), "a/b/file read ahead");
        for e in tree.iter().filter(|e| !e.kind.is_dir()) {
            assert_eq!(
                cache.contains(&e.oid),
                e.kind != EntryKind::Symlink,
                "{:?}",
                String::from_utf8_lossy(&e.name)
            );
        }
        // The reader listing a tree the cursor passed moves the reader's
        // mark there and keeps the cursor; a tree it did not pass restarts it.
        ahead.listed(b, &store, &cache);
        assert_eq!(ahead.reader, (2, 10), "after empty and run.sh");
        assert!(ahead.frames.is_empty(), "cursor kept (at its end)");
        let two = store.resolve("two").expect("two").tree;
        ahead.listed(two, &store, &cache);
        assert_eq!(ahead.frames.len(), 1, "restarted at the new tree");
        assert_eq!(ahead.reader, (3, ahead.bytes));
        assert!(
            !ahead.step(&store, &cache, 0, &mut counts),
            "no room ahead: it waits for the reader"
        );
        assert!(ahead.step(&store, &cache, u64::MAX, &mut counts));
        assert_eq!(
            ahead.seq, 6,
            "cached empty and run.sh passed, new a/b/file read"
        );
        assert_eq!(counts.ahead, 4);
    }
}
