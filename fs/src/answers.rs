//! What [`GitFs`] answers each FUSE request, the same through either
//! transport: the reply as a typed value, or the errno to send, logged here
//! once. `fuser_adapter` and `ring` only turn these into
//! bytes, so a request cannot be answered one way through /dev/fuse and
//! another through io_uring.
//!
//! A tree of git objects is never written to, so every modification is
//! [`Declined::ReadOnly`]; OPEN, OPENDIR and FLUSH are declined so the kernel
//! stops sending them (see [`Declined::Unneeded`]).

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use fuser::{Errno, FileAttr};
use tracing::{debug, trace, warn};

use crate::attr::BLOCK_SIZE;
use crate::error::FsError;
use crate::filesystem::{DirItem, GitFs};
use crate::inode::Ino;

/// The reply to a request, or the errno the kernel gets instead.
pub type Answer<T> = std::result::Result<T, Errno>;

/// A request this filesystem refuses whatever it names, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declined {
    /// A modification (the request's name): EROFS. The `ro` mount option
    /// stops most of these in the VFS already; this answers whatever still
    /// gets through.
    ReadOnly(&'static str),
    /// OPEN, OPENDIR or FLUSH (the request's name): ENOSYS, after which the
    /// kernel stops sending it for the rest of the mount. Without OPEN it
    /// keeps the page cache across opens (DESIGN.md: 1.0x native warm reads
    /// instead of 2-6x); without FLUSH, close(2) costs no request.
    Unneeded(&'static str),
    /// IOCTL: ENOTTY, "not a terminal", quietly, as any regular file answers
    /// (Python's open() asks every file, thousands in a world rebuild).
    NotTerminal,
    /// A request this filesystem does not know (its opcode): ENOSYS.
    Unknown(u32),
}

impl Declined {
    /// The errno the kernel gets.
    pub fn errno(self) -> Errno {
        match self {
            Declined::ReadOnly(_) => Errno::EROFS,
            Declined::Unneeded(_) | Declined::Unknown(_) => Errno::ENOSYS,
            Declined::NotTerminal => Errno::ENOTTY,
        }
    }
}

/// The answer to STATFS: nothing free, nothing to allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statfs {
    /// Inodes: those the kernel holds.
    pub files: u64,
    /// Block (and fragment) size.
    pub block_size: u32,
    /// The longest name.
    pub name_len: u32,
}

impl GitFs {
    /// LOOKUP: the child's attributes and how long the kernel may keep them.
    pub fn answer_lookup(&self, parent: Ino, name: &OsStr) -> Answer<(FileAttr, Duration)> {
        trace!(parent = parent.0, ?name, "lookup");
        let attr = self
            .lookup(parent, name)
            .map_err(failed("lookup", parent))?;
        Ok((attr, self.ttl(Ino(attr.ino.0), parent)))
    }

    /// GETATTR: the attributes and how long the kernel may keep them.
    pub fn answer_getattr(&self, ino: Ino) -> Answer<(FileAttr, Duration)> {
        trace!(ino = ino.0, "getattr");
        let attr = self.getattr(ino).map_err(failed("getattr", ino))?;
        let parent = self.node(ino).map_or(Ino::ROOT, |n| n.1);
        Ok((attr, self.ttl(ino, parent)))
    }

    /// READLINK: the target.
    pub fn answer_readlink(&self, ino: Ino) -> Answer<Arc<[u8]>> {
        trace!(ino = ino.0, "readlink");
        self.readlink(ino).map_err(failed("readlink", ino))
    }

    /// READ: the blob and the range of it to send.
    pub fn answer_read(
        &self,
        ino: Ino,
        offset: u64,
        size: u32,
    ) -> Answer<(Arc<[u8]>, std::ops::Range<usize>)> {
        trace!(ino = ino.0, offset, size, "read");
        self.read(ino, offset, size).map_err(failed("read", ino))
    }

    /// READDIR: `add` per entry until it says the reply is full.
    pub fn answer_readdir(
        &self,
        ino: Ino,
        offset: u64,
        add: impl FnMut(DirItem) -> bool,
    ) -> Answer<()> {
        trace!(ino = ino.0, offset, "readdir");
        self.readdir(ino, offset, add)
            .map_err(failed("readdir", ino))
    }

    /// READDIRPLUS: `add` per entry, with its attributes and their TTL,
    /// until it says the reply is full.
    pub fn answer_readdirplus(
        &self,
        ino: Ino,
        offset: u64,
        add: impl FnMut(DirItem, &FileAttr, Duration) -> bool,
    ) -> Answer<()> {
        trace!(ino = ino.0, offset, "readdirplus");
        self.readdirplus(ino, offset, add)
            .map_err(failed("readdirplus", ino))
    }

    /// FORGET: the kernel dropped `n` lookups of `ino`.
    pub fn answer_forget(&self, ino: Ino, n: u64) {
        trace!(ino = ino.0, n, "forget");
        self.forget(ino, n);
    }

    /// STATFS.
    pub fn answer_statfs(&self) -> Statfs {
        trace!("statfs");
        Statfs {
            files: self.inode_count() as u64,
            block_size: BLOCK_SIZE,
            name_len: 255,
        }
    }

    /// GETXATTR: there are none, so always an errno (ENODATA, or ENOENT for
    /// an unknown inode).
    pub fn answer_getxattr(&self, ino: Ino, name: &OsStr) -> Errno {
        trace!(ino = ino.0, ?name, "getxattr");
        match self.getxattr(ino) {
            Ok(()) => Errno::NO_XATTR,
            Err(e) => failed("getxattr", ino)(e),
        }
    }

    /// LISTXATTR: the inode exists and its list is empty.
    pub fn answer_listxattr(&self, ino: Ino) -> Answer<()> {
        trace!(ino = ino.0, "listxattr");
        self.node(ino).map(drop).map_err(failed("listxattr", ino))
    }

    /// ACCESS: everything may be read and searched, nothing written.
    pub fn answer_access(&self, ino: Ino, write: bool) -> Answer<()> {
        trace!(ino = ino.0, write, "access");
        self.node(ino).map_err(failed("access", ino))?;
        match write {
            true => Err(Errno::EROFS),
            false => Ok(()),
        }
    }

    /// RELEASE, RELEASEDIR: nothing was opened, so nothing to release.
    pub fn answer_release(&self, ino: Ino) -> Answer<()> {
        trace!(ino = ino.0, "release");
        Ok(())
    }

    /// Any request refused whatever it names (on inode or parent `ino`).
    pub fn decline(&self, why: Declined, ino: Ino) -> Errno {
        trace!(ino = ino.0, ?why, "declined");
        why.errno()
    }
}

/// Turns a failure of `op` on `ino` into its errno, logged by how unusual it
/// is: ENOENT at trace, other expected answers at debug, the rest (EIO) as
/// warnings with every cause.
fn failed(op: &'static str, ino: Ino) -> impl Fn(FsError) -> Errno {
    move |err| {
        let errno = err.errno();
        if errno == Errno::ENOENT {
            trace!(op, ino = ino.0, error = %err, "not found");
        } else if err.is_expected() {
            debug!(op, ino = ino.0, error = %err, "refused");
        } else {
            warn!(op, ino = ino.0, error = %format!("{:#}", ErrChain(&err)), "failed, answering EIO");
        }
        errno
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
