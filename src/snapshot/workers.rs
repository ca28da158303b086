//! The workers of the import pipeline: object ids and deflating, then the
//! packer that writes each object once and gathers the tree.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use git2::{Oid, Repository};
use tracing::debug;

use super::error::{Error, Result};
use super::pack::{object_id, Deflater, ObjectKind, PackWriter, PackedObject};
use super::tag::{self, CommitFacts, SnapshotDate};
use super::tree::{FileMode, TreeBuilder};

/// One tar entry on its way from the reader thread to the packer.
pub(super) enum Item {
    File {
        raw: Vec<u8>,
        path: String,
        exec: bool,
        data: Vec<u8>,
    },
    Symlink {
        raw: Vec<u8>,
        path: String,
        target: String,
    },
    Hardlink {
        raw: Vec<u8>,
        path: String,
        target: String,
    },
}

/// An entry after a worker hashed it, and packed it unless the repository
/// already has the object.
pub(super) enum Hashed {
    Blob {
        raw: Vec<u8>,
        path: String,
        mode: FileMode,
        oid: Oid,
        packed: Option<PackedObject>,
        size: u64,
        /// The content, kept only for the files the import reads itself.
        keep: Option<Vec<u8>>,
    },
    Hardlink {
        raw: Vec<u8>,
        path: String,
        target: String,
    },
}

/// The reader's end of the channel to the workers, which starts idle workers
/// when they fall behind (see the import's `WORKERS`).
pub(super) struct Batches {
    pub(super) tx: SyncSender<Vec<Item>>,
    /// Workers waiting for a start signal.
    pub(super) idle: Vec<SyncSender<()>>,
}

impl Batches {
    /// Hand `batch` to the workers; `false` if they hung up.
    pub(super) fn send(&mut self, batch: Vec<Item>) -> bool {
        match self.tx.try_send(batch) {
            Ok(()) => true,
            Err(TrySendError::Full(batch)) => {
                if let Some(start) = self.idle.pop() {
                    debug!("workers fell behind, starting one more");
                    let _ = start.send(());
                }
                self.tx.send(batch).is_ok()
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// A worker: object ids and deflating, the CPU-heavy half of packing. With
/// `start`, it waits for the reader to call it in, and stops if the reader
/// ends first. Stops when either channel closes.
pub(super) fn hash_and_deflate(
    rx: Arc<Mutex<Receiver<Vec<Item>>>>,
    tx: SyncSender<Vec<Hashed>>,
    repo: Option<Repository>,
    start: Option<Receiver<()>>,
) {
    if start.is_some_and(|s| s.recv().is_err()) {
        return;
    }
    let odb = repo.as_ref().and_then(|r| r.odb().ok());
    let mut deflater = Deflater::new();
    loop {
        let batch = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(batch) = batch else { return };
        let hashed: Vec<Hashed> = batch
            .into_iter()
            .map(|item| hash_one(item, odb.as_ref(), &mut deflater))
            .collect();
        if tx.send(hashed).is_err() {
            return;
        }
    }
}

/// A worker's job for one entry.
pub(super) fn hash_one(item: Item, odb: Option<&git2::Odb<'_>>, deflater: &mut Deflater) -> Hashed {
    {
        let mut blob = |data: &[u8]| {
            let oid = object_id(ObjectKind::Blob, data);
            let have = odb.is_some_and(|o| o.exists(oid));
            (oid, (!have).then(|| deflater.pack(ObjectKind::Blob, data)))
        };
        match item {
            Item::File {
                raw,
                path,
                exec,
                data,
            } => {
                let (oid, packed) = blob(&data);
                let size = data.len() as u64;
                let keep = matches!(
                    path.as_str(),
                    "metadata/timestamp.x" | "metadata/timestamp.commit"
                )
                .then_some(data);
                Hashed::Blob {
                    raw,
                    path,
                    mode: if exec {
                        FileMode::Executable
                    } else {
                        FileMode::Regular
                    },
                    oid,
                    packed,
                    size,
                    keep,
                }
            }
            Item::Symlink { raw, path, target } => {
                let (oid, packed) = blob(target.as_bytes());
                Hashed::Blob {
                    raw,
                    path,
                    mode: FileMode::Symlink,
                    oid,
                    packed,
                    size: 0,
                    // The target, to resolve chains once the tree is whole.
                    keep: Some(target.into_bytes()),
                }
            }
            Item::Hardlink { raw, path, target } => Hashed::Hardlink { raw, path, target },
        }
    }
}

impl Item {
    /// Content bytes it carries.
    pub(super) fn len(&self) -> usize {
        match self {
            Item::File { data, .. } => data.len(),
            _ => 0,
        }
    }
}

/// What the packer gathered.
pub(super) struct Consumed {
    pub(super) tree: TreeBuilder,
    pub(super) bytes: u64,
    pub(super) timestamp_x: Option<Vec<u8>>,
    pub(super) timestamp_commit: Option<Vec<u8>>,
}

impl Consumed {
    /// What the commit message records of the snapshot.
    pub(super) fn facts(&self, date: SnapshotDate) -> CommitFacts {
        CommitFacts {
            date,
            upstream: self
                .timestamp_commit
                .as_deref()
                .and_then(tag::parse_timestamp_commit),
            files: self.tree.files(),
            bytes: self.bytes,
        }
    }
}

/// The collector: pack writes (each object once), the tree, duplicate checks;
/// hardlinks are resolved at the end, since workers may reorder entries.
pub(super) fn consume(rx: Receiver<Vec<Hashed>>, pack: &mut PackWriter) -> Result<Consumed> {
    let mut out = Consumed {
        tree: TreeBuilder::new(),
        bytes: 0,
        timestamp_x: None,
        timestamp_commit: None,
    };
    let mut hardlinks = Vec::new();
    for hashed in rx.into_iter().flatten() {
        match hashed {
            Hashed::Blob {
                raw,
                path,
                mode,
                oid,
                packed,
                size,
                keep,
            } => {
                if let Some(p) = &packed {
                    pack.add_packed(oid, p)?;
                }
                if mode == FileMode::Symlink {
                    let target = keep.as_deref().map(String::from_utf8_lossy);
                    out.tree
                        .insert_symlink(&raw, &path, oid, target.as_deref().unwrap_or(""))?;
                    continue;
                }
                out.tree.insert(&raw, &path, mode, oid)?;
                out.bytes += size;
                match path.as_str() {
                    "metadata/timestamp.x" => out.timestamp_x = keep,
                    "metadata/timestamp.commit" => out.timestamp_commit = keep,
                    _ => {}
                }
            }
            Hashed::Hardlink { raw, path, target } => hardlinks.push((raw, path, target)),
        }
    }
    for (raw, path, target) in hardlinks {
        let (mode, oid) = match out.tree.get(&target) {
            Some((FileMode::Symlink, _)) | None => {
                return Err(Error::entry(
                    &raw,
                    format!("hardlink to {target:?}, which is not a regular file in the snapshot"),
                ))
            }
            Some(found) => found,
        };
        out.tree.insert(&raw, &path, mode, oid)?;
    }
    Ok(out)
}
