//! The `/dev/fuse` transport: [`fuser::Filesystem`] for a [`GitFs`]. Each
//! request is handed to the [`GitFs`] answer of the same name
//! ([`crate::answers`]) and the answer put into fuser's reply; nothing is
//! decided here but what to ask the kernel for at INIT.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, FileHandle, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::debug;

use crate::answers::Declined;
use crate::filesystem::GitFs;
use crate::inode::Ino;
use crate::wire::MAX_WRITE;

/// The filesystem as fuser serves it: the [`GitFs`], shared with the io_uring
/// queue threads, and whether to ask the kernel for FUSE over io_uring.
#[derive(Debug)]
pub struct Served {
    fs: Arc<GitFs>,
    /// Set when queue threads stand ready; true after INIT if the kernel
    /// agreed to send requests through them.
    uring: Option<Arc<AtomicBool>>,
}

impl Served {
    /// Serve `fs`; with `uring`, ask for FUSE over io_uring at INIT and record
    /// there whether the kernel agreed.
    pub fn new(fs: Arc<GitFs>, uring: Option<Arc<AtomicBool>>) -> Served {
        Served { fs, uring }
    }

    /// Refuse a request, as [`GitFs::decline`] says.
    fn decline(&self, why: Declined, ino: INodeNo) -> fuser::Errno {
        self.fs.decline(why, Ino(ino.0))
    }
}

/// Each request goes to its [`GitFs`] answer; the answer goes into the reply.
impl fuser::Filesystem for Served {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // READDIRPLUS answers a listing with every entry's attributes, so a
        // walk that stats what it lists (find, tar, portage's cache checks)
        // makes one request per directory batch instead of one per entry;
        // AUTO lets the kernel fall back to plain readdir for a bare `ls`.
        // PARALLEL_DIROPS lets parallel builds look up in one directory at
        // once. Symlinks of one immutable tree may be cached; the all-tags
        // view's `latest` changes, so it does not ask for that.
        let mut wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS;
        if self.fs.symlinks_stay() {
            wanted |= InitFlags::FUSE_CACHE_SYMLINKS;
        }
        let have = config.capabilities();
        // FUSE over io_uring: each CPU gets a queue served by a thread pinned
        // to it, so a request is answered on the CPU that made it instead of
        // waking a daemon thread on another one (see `ring`).
        if let Some(flag) = &self.uring {
            let agreed = have.contains(InitFlags::FUSE_OVER_IO_URING);
            if agreed {
                wanted |= InitFlags::FUSE_OVER_IO_URING;
            }
            flag.store(agreed, Ordering::SeqCst);
        }
        if let Err(missing) = config.add_capabilities(wanted & have) {
            debug!(?missing, "kernel lacks some FUSE capabilities");
        }
        let _ = config.set_max_write(MAX_WRITE);
        debug!(requested = ?(wanted & have), "FUSE capabilities");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.answer_lookup(Ino(parent.0), name) {
            Ok((attr, ttl)) => reply.entry(&ttl, &attr, Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.answer_forget(Ino(ino.0), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.answer_getattr(Ino(ino.0)) {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(errno) => reply.error(errno),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.answer_readlink(Ino(ino.0)) {
            Ok(target) => reply.data(&target),
            Err(errno) => reply.error(errno),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(self.decline(Declined::Unneeded("open"), ino));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(self.decline(Declined::Unneeded("opendir"), ino));
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _: LockOwner,
        reply: ReplyEmpty,
    ) {
        // fuser's default would also log a warning on every close(2).
        reply.error(self.decline(Declined::Unneeded("flush"), ino));
    }

    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // fuser's default would log a warning per call.
        reply.error(self.decline(Declined::NotTerminal, ino));
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.answer_read(Ino(ino.0), offset, size) {
            Ok((blob, range)) => reply.data(&blob[range]),
            Err(errno) => reply.error(errno),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let res = self.fs.answer_readdir(Ino(ino.0), offset, |it| {
            let name = OsStr::from_bytes(it.name);
            reply.add(INodeNo(it.ino.0), it.next, it.kind, name)
        });
        match res {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let res = self
            .fs
            .answer_readdirplus(Ino(ino.0), offset, |it, attr, ttl| {
                let name = OsStr::from_bytes(it.name);
                reply.add(INodeNo(it.ino.0), it.next, name, &ttl, attr, Generation(0))
            });
        match res {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        match self.fs.answer_release(Ino(ino.0)) {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        match self.fs.answer_release(Ino(ino.0)) {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.answer_statfs();
        let (bsize, namelen) = (s.block_size, s.name_len);
        reply.statfs(0, 0, 0, s.files, 0, bsize, namelen, bsize);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(self.fs.answer_getxattr(Ino(ino.0), name));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.answer_listxattr(Ino(ino.0)) {
            Ok(()) if size == 0 => reply.size(0),
            Ok(()) => reply.data(&[]),
            Err(errno) => reply.error(errno),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self
            .fs
            .answer_access(Ino(ino.0), mask.contains(AccessFlags::W_OK))
        {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    // Every modification: refused as read-only.

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(self.decline(Declined::ReadOnly("setattr"), ino));
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(self.decline(Declined::ReadOnly("mknod"), parent));
    }

    fn mkdir(&self, _: &Request, parent: INodeNo, _: &OsStr, _: u32, _: u32, reply: ReplyEntry) {
        reply.error(self.decline(Declined::ReadOnly("mkdir"), parent));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.decline(Declined::ReadOnly("unlink"), parent));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.decline(Declined::ReadOnly("rmdir"), parent));
    }

    fn symlink(&self, _: &Request, parent: INodeNo, _: &OsStr, _: &Path, reply: ReplyEntry) {
        reply.error(self.decline(Declined::ReadOnly("symlink"), parent));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(self.decline(Declined::ReadOnly("rename"), parent));
    }

    fn link(&self, _: &Request, ino: INodeNo, _: INodeNo, _: &OsStr, reply: ReplyEntry) {
        reply.error(self.decline(Declined::ReadOnly("link"), ino));
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(self.decline(Declined::ReadOnly("write"), ino));
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(self.decline(Declined::ReadOnly("create"), parent));
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(self.decline(Declined::ReadOnly("setxattr"), ino));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.decline(Declined::ReadOnly("removexattr"), ino));
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // As through io_uring (fuser's default would answer ENOSYS, with a
        // warning).
        reply.error(self.decline(Declined::ReadOnly("copy_file_range"), ino_out));
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(self.decline(Declined::ReadOnly("fallocate"), ino));
    }
}
