//! The read-ahead policy: when to ask the [`Prefetcher`] for which files.
//!
//! A READ at the start of a file means its page was not stored in time (or
//! never asked for): the files listed after it in its directory are asked
//! for, unless a recent request already covers that place. The first
//! READDIRPLUS of a directory after reads asks for its first files, so the
//! prefetcher is on them before the reader is; a stat-only walk (no reads
//! between listings) asks for nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use git2::Oid;
use tracing::trace;

use crate::cache::{Cached, ObjectCache};
use crate::inode::{child_data, Ino, InodeTable, Node, NodeData, NodeKind};
use crate::prefetch::{Prefetcher, WINDOW};
use crate::store::{EntryKind, TreeEntry};

/// How long a request for a directory's files covers READs in it: longer
/// than the prefetcher keeps retrying refused stores.
const WINDOW_FRESH: Duration = Duration::from_millis(50);

/// Per directory, the listing index up to which files were asked for, and
/// when.
pub(crate) type Asked = HashMap<Ino, (usize, Instant)>;

/// What was read and asked for so far, and the prefetcher asked.
pub(crate) struct ReadAhead {
    /// Reads the next files of a directory into the cache and the kernel.
    prefetch: Option<Prefetcher>,
    cache: Arc<ObjectCache>,
    inodes: Arc<Mutex<InodeTable>>,
    asked: Mutex<Asked>,
    /// File reads so far, and their count at the last READDIRPLUS.
    reads: AtomicU64,
    reads_at_listing: AtomicU64,
}

impl ReadAhead {
    /// The policy over `prefetch`, looking directories up in `cache` and
    /// `inodes` (the filesystem's own).
    pub(crate) fn new(
        prefetch: Option<Prefetcher>,
        cache: Arc<ObjectCache>,
        inodes: Arc<Mutex<InodeTable>>,
    ) -> ReadAhead {
        ReadAhead {
            prefetch,
            cache,
            inodes,
            asked: Mutex::new(HashMap::new()),
            reads: AtomicU64::new(0),
            reads_at_listing: AtomicU64::new(0),
        }
    }

    /// The directories asked for so far, and up to where (what the tests
    /// look at).
    #[cfg(test)]
    pub(crate) fn lock(&self) -> std::sync::LockResult<std::sync::MutexGuard<'_, Asked>> {
        self.asked.lock()
    }

    /// File reads so far.
    pub(crate) fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// A file read begins.
    pub(crate) fn count_read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    fn node(&self, ino: Ino) -> Option<Node> {
        self.inodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(ino)
    }

    /// After a READ of `oid` in directory `parent` (its page was not in the
    /// kernel), ask the prefetcher for the files listed after it, unless an
    /// earlier request already covers this place (the prefetcher is merely
    /// behind).
    pub(crate) fn after_read(&self, parent: Ino, oid: Oid) {
        if self.prefetch.is_none() {
            return;
        }
        if let Some((pdata, tree, next)) = self.listed_after(parent, oid) {
            self.request_window(parent, pdata.time, &tree, next);
        }
    }

    /// Directory `parent`'s node and cached listing, and the index after the
    /// entry for blob `oid` in it.
    fn listed_after(&self, parent: Ino, oid: Oid) -> Option<(NodeData, Arc<[TreeEntry]>, usize)> {
        let pdata = self.node(parent)?.data;
        if pdata.kind != NodeKind::Entry(EntryKind::Tree) {
            return None;
        }
        let Some(Cached::Tree(tree)) = self.cache.get(&pdata.oid) else {
            return None;
        };
        let i = tree.iter().position(|e| e.oid == oid)?;
        Some((pdata, tree, i + 1))
    }

    /// Ask the prefetcher for the files of directory `dir` (listing `tree`,
    /// of commit `time`) from index `from` on, unless a recent request
    /// already covers `from` (an older one may have given up storing: the
    /// kernel did not hold the inodes in time).
    fn request_window(&self, dir: Ino, time: i64, tree: &[TreeEntry], from: usize) {
        let Some(prefetch) = &self.prefetch else {
            return;
        };
        let end = from.saturating_add(WINDOW).min(tree.len());
        if from >= end || !self.mark_asked(dir, from, end) {
            return;
        }
        let oids: Vec<(Oid, Ino)> = {
            let table = self.inodes.lock().unwrap_or_else(|p| p.into_inner());
            tree[from..end]
                .iter()
                .filter(|e| matches!(e.kind, EntryKind::File | EntryKind::Exec))
                .map(|e| (e.oid, table.peek(dir, &e.name, &child_data(e, time))))
                .collect()
        };
        if !oids.is_empty() {
            trace!(dir = dir.0, from, count = oids.len(), "prefetch requested");
            prefetch.request(oids);
        }
    }

    /// Record a request for `dir`'s files `from..end`; false if a recent one
    /// already covers `from`.
    fn mark_asked(&self, dir: Ino, from: usize, end: usize) -> bool {
        let mut asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some(&(upto, when)) = asked.get(&dir) {
            if upto > from && upto <= from + WINDOW && now < when + WINDOW_FRESH {
                return false;
            }
        }
        if asked.len() >= 4096 {
            asked.clear();
        }
        asked.insert(dir, (end, now));
        true
    }

    /// At the first READDIRPLUS of directory `ino`: if the reader read files
    /// since the last listing, it is walking and reading everything, so start
    /// on this directory's files before its first read. A stat-only walk
    /// never triggers this.
    pub(crate) fn at_listing(&self, ino: Ino) {
        let reads = self.reads.load(Ordering::Relaxed);
        if self.reads_at_listing.swap(reads, Ordering::Relaxed) == reads {
            return;
        }
        let Some(node) = self.node(ino) else {
            return;
        };
        let data = node.data;
        if data.kind != NodeKind::Entry(EntryKind::Tree) {
            return;
        }
        if let Some(Cached::Tree(tree)) = self.cache.get(&data.oid) {
            self.request_window(ino, data.time, &tree, 0);
        }
        if let Some(p) = &self.prefetch {
            p.listed(data.oid);
        }
    }
}
