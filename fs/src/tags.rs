//! The tags of the all-tags view: the list, re-read whenever the refs change
//! on disk, and the nodes the view shows for a tag and for `latest`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use git2::Oid;
use tracing::debug;

use crate::error::Result;
use crate::inode::{NodeData, NodeKind};
use crate::store::{EntryKind, GitStore, Resolved};

/// The name of the newest-tag symlink in the all-tags view.
pub const LATEST: &str = "latest";

/// The tag list of the all-tags view, re-read when the refs change on disk.
#[derive(Debug)]
struct TagState {
    tags: Arc<Vec<(String, Resolved)>>,
    stamp: Vec<Option<(SystemTime, u64, u64)>>,
}

/// The tags of a repository, re-read whenever its refs change on disk. Shared
/// between the filesystem and the watcher thread that invalidates the kernel's
/// cached root listing; it has its own repository handle so neither waits on
/// the other's object reads.
#[derive(Debug)]
pub struct TagSource {
    store: GitStore,
    state: Mutex<TagState>,
    /// Bumped whenever the tag list changes.
    generation: AtomicU64,
}

impl TagSource {
    /// Read the tags of `git_dir`.
    pub fn new(git_dir: &Path) -> Result<TagSource> {
        let store = GitStore::open(git_dir)?;
        let state = TagState {
            stamp: refs_stamp(git_dir),
            tags: Arc::new(store.tags()?),
        };
        Ok(TagSource {
            store,
            state: Mutex::new(state),
            generation: AtomicU64::new(0),
        })
    }

    /// The current tags, re-read first if the refs changed on disk.
    pub fn current(&self) -> Result<Arc<Vec<(String, Resolved)>>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let stamp = refs_stamp(self.store.path());
        if stamp != state.stamp {
            let tags = self.store.tags()?;
            debug!(count = tags.len(), "refs changed, tag list re-read");
            if *state.tags != tags {
                self.generation.fetch_add(1, Ordering::SeqCst);
            }
            state.tags = Arc::new(tags);
            state.stamp = stamp;
        }
        Ok(state.tags.clone())
    }

    /// A counter that changes whenever the tag list does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

/// The tag `latest` points at: the newest by commit time; on a tie the
/// greater name (dates sort).
pub fn newest(tags: &[(String, Resolved)]) -> Option<&(String, Resolved)> {
    tags.iter()
        .max_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)))
}

/// The node of a tag: its tree, at its commit time.
pub(crate) fn tag_data(r: &Resolved) -> NodeData {
    NodeData {
        oid: r.tree,
        kind: NodeKind::Entry(EntryKind::Tree),
        time: r.time,
    }
}

/// The node of `latest`, at the newest tag's commit `time`.
pub(crate) fn latest_data(time: i64) -> NodeData {
    NodeData {
        oid: Oid::ZERO_SHA1,
        kind: NodeKind::Latest,
        time,
    }
}

/// What changes on disk when a tag is added, moved or packed: `packed-refs` and
/// the `refs/tags` directory (git writes a ref by renaming a lock file into it).
fn refs_stamp(git_dir: &Path) -> Vec<Option<(SystemTime, u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    [PathBuf::from("packed-refs"), PathBuf::from("refs/tags")]
        .iter()
        .map(|p| {
            std::fs::metadata(git_dir.join(p)).ok().map(|m| {
                (
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    m.size(),
                    m.ino(),
                )
            })
        })
        .collect()
}
