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

use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use git2::Oid;
use tracing::{debug, trace};

use crate::cache::{Cached, ObjectCache};
use crate::error::{FsError, Result};
use crate::inode::{Ino, InodeTable};
use crate::store::GitStore;

/// Files asked for per cache miss.
pub const WINDOW: usize = 128;
/// Blobs larger than this are left for the reader: prefetching them could
/// push out of the cache what is about to be read.
const MAX_BLOB: u64 = 256 << 10;
/// Queued requests; more are dropped.
const QUEUE: usize = 16;

/// The background reader. Dropping it stops and joins the thread.
#[derive(Debug)]
pub struct Prefetcher {
    tx: Option<SyncSender<Vec<(Oid, Ino)>>>,
    handle: Option<JoinHandle<()>>,
}

impl Prefetcher {
    /// Start the thread over its own handle on `git_dir`, filling `cache` and,
    /// once `pages` is set, the kernel's page cache.
    /// Stores go only to inodes `inodes` holds for the very blob stored.
    pub fn spawn(
        git_dir: &Path,
        cache: Arc<ObjectCache>,
        pages: Arc<OnceLock<fuser::Notifier>>,
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
        let Some(tx) = &self.tx else {
            return false;
        };
        match tx.try_send(oids) {
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
    pages: &OnceLock<fuser::Notifier>,
    inodes: &Mutex<InodeTable>,
    rx: &Receiver<Vec<(Oid, Ino)>>,
) {
    // Never fill more than an eighth of the budget per request, so a window
    // cannot evict the files read just before it.
    let per_request = cache.budget() / 8;
    let (mut read, mut bytes, mut stored) = (0u64, 0u64, 0u64);
    for oids in rx {
        let mut taken = 0;
        // Stores the kernel refused because it had not yet taken the inode in
        // (the listing that names it is still being parsed): retried after
        // each later blob and once at the end of the request.
        let mut again: Vec<(Oid, Ino, Arc<[u8]>)> = Vec::new();
        let kernel = pages.get();
        // Store only into an inode the table holds for exactly this blob: a
        // record exists only while the kernel holds the inode, and the check
        // makes a stale or (56-bit hash) colliding number harmless. No record
        // yet (the listing is still being answered): retried later.
        let mut push = |oid: Oid, ino: Ino, blob: &Arc<[u8]>, again: &mut Vec<_>| {
            let Some(k) = kernel.filter(|_| !blob.is_empty()) else {
                return;
            };
            let record = inodes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(ino)
                .map(|n| n.data.oid);
            match record {
                Some(o) if o == oid => match k.store(fuser::INodeNo(ino.0), 0, blob) {
                    Ok(()) => stored += 1,
                    Err(_) => again.push((oid, ino, blob.clone())),
                },
                Some(_) => {}
                None => again.push((oid, ino, blob.clone())),
            }
        };
        for (oid, ino) in oids {
            if taken >= per_request {
                break;
            }
            if cache.contains(&oid) {
                continue;
            }
            // A reader is inflating it itself.
            let Some(claim) = cache.claim(oid) else {
                continue;
            };
            match store.blob_size(oid) {
                Ok(size) if size <= MAX_BLOB => {}
                Ok(_) => continue,
                Err(e) => {
                    debug!(%oid, error = %e, "prefetch: no blob header");
                    continue;
                }
            }
            match store.read_blob(oid) {
                Ok(blob) => {
                    taken += blob.len();
                    read += 1;
                    bytes += blob.len() as u64;
                    for (o, i, b) in std::mem::take(&mut again) {
                        push(o, i, &b, &mut Vec::new());
                    }
                    cache.insert(oid, Cached::Blob(blob.clone()));
                    drop(claim);
                    push(oid, ino, &blob, &mut again);
                }
                Err(e) => debug!(%oid, error = %e, "prefetch: read failed"),
            }
        }
        for (oid, ino, blob) in again {
            // Still refused: the kernel does not hold the inode (any more);
            // it will READ the file if it needs it.
            let mut refused = Vec::new();
            push(oid, ino, &blob, &mut refused);
            if !refused.is_empty() {
                trace!(ino = ino.0, "page store refused");
            }
        }
    }
    debug!(blobs = read, bytes, stored, "prefetch thread done");
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
}
