//! The crate's one error type, and its mapping to the errno a FUSE reply carries.
//!
//! Library callers (`mount()`, the CLI) see the full message; the kernel only sees
//! `FsError::errno()`. Anything without an obvious errno becomes `EIO`, and the
//! FUSE adapter logs it at `warn` so a corrupt object never fails silently.

use std::path::PathBuf;

use fuser::Errno;

/// Everything that can go wrong in portroot-fs.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The git repository could not be opened.
    #[error("opening git repository {path}")]
    OpenRepo {
        /// The `git_dir` given.
        path: PathBuf,
        /// What libgit2 said.
        #[source]
        source: git2::Error,
    },
    /// A tag, branch or commit id that the repository does not have.
    #[error("unknown ref {name:?} in {repo}")]
    UnknownRef {
        /// The ref as given.
        name: String,
        /// The repository searched.
        repo: PathBuf,
    },
    /// Reading an object or a ref failed.
    #[error("reading {what} from the git repository")]
    Git {
        /// Which object or ref.
        what: String,
        /// What libgit2 said.
        #[source]
        source: git2::Error,
    },
    /// An object was not of the type its tree entry promised.
    #[error("object {oid} is not a {expected}")]
    WrongType {
        /// The object.
        oid: git2::Oid,
        /// What the tree entry said it is.
        expected: &'static str,
    },
    /// The kernel named an inode this mount does not know (or no longer knows).
    #[error("unknown inode {0}")]
    UnknownInode(u64),
    /// No entry of that name in the directory.
    #[error("no entry {name:?} in inode {parent}")]
    NotFound {
        /// The directory inode.
        parent: u64,
        /// The name looked up.
        name: String,
    },
    /// A directory operation on a non-directory.
    #[error("inode {0} is not a directory")]
    NotDir(u64),
    /// readlink on something that is not a symlink.
    #[error("inode {0} is not a symlink")]
    NotSymlink(u64),
    /// read on a directory.
    #[error("inode {0} is a directory")]
    IsDir(u64),
    /// Any modification: the filesystem is read-only.
    #[error("read-only filesystem")]
    ReadOnly,
    /// No extended attributes exist here.
    #[error("no such attribute")]
    NoAttr,
    /// The mount point is unusable.
    #[error("mount point {path}: {why}")]
    BadMountpoint {
        /// The mount point.
        path: PathBuf,
        /// Why: does not exist, not a directory, not empty, already mounted.
        why: &'static str,
    },
    /// FUSE over io_uring was asked for and cannot be had.
    #[error("FUSE over io_uring: {0}")]
    IoUring(String),
    /// An io error on a named path.
    #[error("{what} {path}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The io error.
        #[source]
        source: std::io::Error,
    },
}

/// The crate's result type.
pub type Result<T, E = FsError> = std::result::Result<T, E>;

impl FsError {
    /// The errno the kernel gets for this error.
    pub fn errno(&self) -> Errno {
        match self {
            FsError::UnknownInode(_) | FsError::NotFound { .. } | FsError::UnknownRef { .. } => {
                Errno::ENOENT
            }
            FsError::NotDir(_) => Errno::ENOTDIR,
            FsError::NotSymlink(_) => Errno::EINVAL,
            FsError::IsDir(_) => Errno::EISDIR,
            FsError::ReadOnly => Errno::EROFS,
            FsError::NoAttr => Errno::NO_XATTR,
            _ => Errno::EIO,
        }
    }

    /// Whether the error is an expected answer (not worth a warning).
    pub fn is_expected(&self) -> bool {
        self.errno() != Errno::EIO
    }

    /// A git error while reading `what`.
    pub(crate) fn git(what: impl std::fmt::Display, source: git2::Error) -> FsError {
        FsError::Git {
            what: what.to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_their_errno() {
        assert_eq!(FsError::UnknownInode(9).errno(), Errno::ENOENT);
        assert_eq!(FsError::ReadOnly.errno(), Errno::EROFS);
        assert_eq!(FsError::NoAttr.errno(), Errno::NO_XATTR);
        assert_eq!(FsError::NotDir(3).errno(), Errno::ENOTDIR);
        let corrupt = FsError::git("blob 00", git2::Error::from_str("corrupt"));
        assert_eq!(corrupt.errno(), Errno::EIO);
        assert!(!corrupt.is_expected());
    }
}
