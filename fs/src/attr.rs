//! Pure conversion of a node to the `FileAttr` the kernel caches.
//!
//! Owner root:root; files 0644 or 0755, directories 0755, symlinks 0777 (their
//! permissions are never checked); every time is the commit time, so nothing
//! looks modified between runs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use crate::inode::{Ino, NodeKind};
use crate::store::EntryKind;

/// Block size reported by `stat`.
pub const BLOCK_SIZE: u32 = 4096;

/// The fuser file type and permission bits for a node kind.
pub fn kind_and_perm(kind: NodeKind) -> (FileType, u16) {
    match kind {
        NodeKind::Entry(EntryKind::File) => (FileType::RegularFile, 0o644),
        NodeKind::Entry(EntryKind::Exec) => (FileType::RegularFile, 0o755),
        NodeKind::Entry(EntryKind::Symlink) | NodeKind::Latest => (FileType::Symlink, 0o777),
        NodeKind::Entry(EntryKind::Tree | EntryKind::Submodule) | NodeKind::TagsRoot => {
            (FileType::Directory, 0o755)
        }
    }
}

/// A commit time (seconds since the epoch, possibly negative) as `SystemTime`.
pub fn system_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// The attributes of a node. `size` is the blob size for files and symlinks,
/// the entry count for directories.
pub fn file_attr(ino: Ino, kind: NodeKind, size: u64, time: i64) -> FileAttr {
    let (kind, perm) = kind_and_perm(kind);
    let t = system_time(time);
    FileAttr {
        ino: INodeNo(ino.0),
        size,
        blocks: size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_follow_the_tree_entry() {
        let at = |k| file_attr(Ino(5), NodeKind::Entry(k), 10, 1787270400);
        assert_eq!(at(EntryKind::File).perm, 0o644);
        assert_eq!(at(EntryKind::Exec).perm, 0o755);
        assert_eq!(at(EntryKind::Tree).kind, FileType::Directory);
        assert_eq!(at(EntryKind::Submodule).kind, FileType::Directory);
        assert_eq!(at(EntryKind::Symlink).kind, FileType::Symlink);
        let a = at(EntryKind::File);
        assert_eq!((a.uid, a.gid, a.nlink, a.ino), (0, 0, 1, INodeNo(5)));
        assert_eq!(a.mtime, UNIX_EPOCH + Duration::from_secs(1787270400));
        assert_eq!(a.atime, a.mtime);
        assert_eq!(a.ctime, a.mtime);
        assert_eq!(a.blocks, 1);
    }

    #[test]
    fn times_before_the_epoch_do_not_panic() {
        assert_eq!(system_time(-10), UNIX_EPOCH - Duration::from_secs(10));
    }
}
