//! `ObjectCache`: decompressed blobs and parsed trees, least recently used first
//! out, capped in bytes.
//!
//! Git objects are immutable, so entries never need invalidating; the only
//! question is memory. Every entry is weighed (content plus bookkeeping) and the
//! oldest are evicted until the total fits the budget, so the daemon's resident
//! size stays within the budget plus a bounded overhead whatever is read. An
//! object larger than the whole budget is served but not kept.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex};

use git2::Oid;
use lru::LruCache;

use crate::store::TreeEntry;

/// Bookkeeping bytes charged per entry on top of its content (the LRU node,
/// the `Arc` header, the key): a conservative estimate so the budget is honest.
const ENTRY_OVERHEAD: usize = 96;

/// A cached object.
#[derive(Debug, Clone)]
pub enum Cached {
    /// A blob's content.
    Blob(Arc<[u8]>),
    /// A tree's entries, sorted by name.
    Tree(Arc<[TreeEntry]>),
}

impl Cached {
    /// What this entry costs against the budget.
    pub fn weight(&self) -> usize {
        ENTRY_OVERHEAD
            + match self {
                Cached::Blob(b) => b.len(),
                Cached::Tree(t) => t
                    .iter()
                    .map(|e| e.name.len() + std::mem::size_of::<TreeEntry>())
                    .sum(),
            }
    }
}

struct Inner {
    lru: LruCache<Oid, Cached>,
    bytes: usize,
}

/// An LRU of git objects with a byte budget. Cheap to share: all methods take
/// `&self`.
pub struct ObjectCache {
    budget: usize,
    inner: Mutex<Inner>,
    /// Blobs someone (a reader or the prefetcher) is inflating right now, so
    /// the other waits for the result instead of doing the same work.
    inflating: Mutex<HashSet<Oid>>,
    inflated: Condvar,
}

/// The right to inflate one blob; released on drop, waking those waiting.
#[derive(Debug)]
pub struct Claim<'a> {
    cache: &'a ObjectCache,
    oid: Oid,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut set = self
            .cache
            .inflating
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        set.remove(&self.oid);
        drop(set);
        self.cache.inflated.notify_all();
    }
}

impl std::fmt::Debug for ObjectCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectCache")
            .field("budget", &self.budget)
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl ObjectCache {
    /// An empty cache holding at most `budget` bytes.
    pub fn new(budget: u64) -> ObjectCache {
        ObjectCache {
            budget: usize::try_from(budget).unwrap_or(usize::MAX),
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            inflating: Mutex::new(HashSet::new()),
            inflated: Condvar::new(),
        }
    }

    /// Claim `oid` for inflating, or `None` if someone else is at it.
    pub fn claim(&self, oid: Oid) -> Option<Claim<'_>> {
        let fresh = self
            .inflating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(oid);
        // Built only when taken: dropping a `Claim` releases the blob.
        fresh.then(|| Claim { cache: self, oid })
    }

    /// Wait until nobody is inflating `oid` (its result, if any, is then in
    /// the cache).
    pub fn wait_for(&self, oid: Oid) {
        let mut set = self.inflating.lock().unwrap_or_else(|p| p.into_inner());
        while set.contains(&oid) {
            set = self.inflated.wait(set).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The cache is consistent between statements; a panic elsewhere while
        // holding it leaves nothing half-done.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bytes currently charged.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The number of cached objects.
    pub fn len(&self) -> usize {
        self.lock().lru.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The budget in bytes.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Whether `oid` is cached (without marking it used).
    pub fn contains(&self, oid: &Oid) -> bool {
        self.lock().lru.contains(oid)
    }

    /// The length of a cached blob (without marking it used).
    pub fn blob_len(&self, oid: &Oid) -> Option<usize> {
        match self.lock().lru.peek(oid) {
            Some(Cached::Blob(b)) => Some(b.len()),
            _ => None,
        }
    }

    /// The cached object, marking it most recently used.
    pub fn get(&self, oid: &Oid) -> Option<Cached> {
        self.lock().lru.get(oid).cloned()
    }

    /// Insert an object, evicting the least recently used until it fits. An
    /// object heavier than the whole budget is not kept.
    pub fn insert(&self, oid: Oid, obj: Cached) {
        let weight = obj.weight();
        if weight > self.budget {
            tracing::debug!(%oid, weight, "object larger than the cache budget, not cached");
            return;
        }
        let mut inner = self.lock();
        if let Some(old) = inner.lru.put(oid, obj) {
            inner.bytes -= old.weight();
        }
        inner.bytes += weight;
        while inner.bytes > self.budget {
            match inner.lru.pop_lru() {
                Some((_, old)) => inner.bytes -= old.weight(),
                None => break,
            }
        }
    }

    /// The blob from the cache, or loaded with `load` and cached.
    pub fn blob<E>(
        &self,
        oid: Oid,
        load: impl FnOnce() -> Result<Arc<[u8]>, E>,
    ) -> Result<Arc<[u8]>, E> {
        if let Some(Cached::Blob(b)) = self.get(&oid) {
            return Ok(b);
        }
        let b = load()?;
        self.insert(oid, Cached::Blob(b.clone()));
        Ok(b)
    }

    /// The tree from the cache, or loaded with `load` and cached.
    pub fn tree<E>(
        &self,
        oid: Oid,
        load: impl FnOnce() -> Result<Vec<TreeEntry>, E>,
    ) -> Result<Arc<[TreeEntry]>, E> {
        if let Some(Cached::Tree(t)) = self.get(&oid) {
            return Ok(t);
        }
        let t: Arc<[TreeEntry]> = load()?.into();
        self.insert(oid, Cached::Tree(t.clone()));
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> Oid {
        Oid::from_bytes(&[n; 20]).expect("20 bytes")
    }

    fn blob(len: usize) -> Cached {
        Cached::Blob(vec![7u8; len].into())
    }

    #[test]
    fn evicts_least_recently_used_to_fit_the_budget() {
        let cache = ObjectCache::new(3 * (1000 + ENTRY_OVERHEAD as u64));
        for n in 0..3 {
            cache.insert(oid(n), blob(1000));
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&oid(0)).is_some(), "touch 0 so 1 is oldest");
        cache.insert(oid(3), blob(1000));
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&oid(1)).is_none(), "1 was least recently used");
        assert!(cache.get(&oid(0)).is_some());
        assert!(cache.bytes() <= 3 * (1000 + ENTRY_OVERHEAD));
    }

    #[test]
    fn objects_over_budget_are_served_but_not_kept() {
        let cache = ObjectCache::new(100);
        let b = cache
            .blob(oid(1), || Ok::<_, ()>(vec![1; 1000].into()))
            .expect("load");
        assert_eq!(b.len(), 1000);
        assert!(cache.is_empty());
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn loads_once_then_hits() {
        let cache = ObjectCache::new(1 << 20);
        let mut loads = 0;
        for _ in 0..3 {
            let b = cache
                .blob(oid(5), || {
                    loads += 1;
                    Ok::<_, ()>(Arc::from(&b"abc"[..]))
                })
                .expect("load");
            assert_eq!(&*b, b"abc");
        }
        assert_eq!(loads, 1);
    }

    #[test]
    fn load_errors_are_returned_and_not_cached() {
        let cache = ObjectCache::new(1 << 20);
        assert_eq!(
            cache.blob(oid(2), || Err::<Arc<[u8]>, _>("bad")),
            Err("bad")
        );
        assert!(cache.is_empty());
    }
}
