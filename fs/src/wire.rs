//! The FUSE wire encoding (include/uapi/linux/fuse.h): the kernel's reply
//! structures written into a byte buffer, native endian, as the io_uring
//! queues send them and as the prefetcher's page stores need their header.
//!
//! Only encoding lives here: what to answer is `GitFs`'s
//! business, and how the bytes travel the transports'.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType};

/// The largest write the kernel may send. Nothing is ever written; a small
/// value keeps every io_uring queue entry's buffer at the 1 MiB of the
/// largest read (256 pages) rather than fuser's 16 MiB.
pub const MAX_WRITE: u32 = 1 << 20;

/// `sizeof(struct fuse_entry_out)`.
pub(crate) const ENTRY_OUT: usize = 40 + ATTR;
/// `sizeof(struct fuse_attr)`.
const ATTR: usize = 88;
/// FUSE_NOTIFY_STORE, sent in the error field of an unsolicited reply.
const NOTIFY_STORE: i32 = 4;

/// The native-endian u32 at byte `at` of `b`.
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The native-endian u64 at byte `at` of `b`.
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The size of a `fuse_dirent` (24 bytes and the name) padded to 8 bytes;
/// `extra` is the name length plus any header before the dirent.
pub(crate) fn dirent_len(extra: usize) -> usize {
    (24 + extra).div_ceil(8) * 8
}

/// Copy as much of `data` as fits into `out`; returns the length copied.
pub(crate) fn copy(out: &mut [u8], data: &[u8]) -> usize {
    let n = data.len().min(out.len());
    out[..n].copy_from_slice(&data[..n]);
    n
}

/// A READDIR(PLUS) reply being filled, entry by entry, up to the size the
/// kernel asked for.
pub(crate) struct DirBuf<'a> {
    out: &'a mut [u8],
    size: usize,
    /// Bytes written so far.
    pub(crate) at: usize,
}

impl<'a> DirBuf<'a> {
    pub(crate) fn new(out: &'a mut [u8], asked: u32) -> DirBuf<'a> {
        let size = (asked as usize).min(out.len());
        DirBuf { out, size, at: 0 }
    }

    /// Write an entry of `len` bytes with `write`; true (nothing written) when
    /// it does not fit, which ends the listing callback.
    pub(crate) fn push(&mut self, len: usize, write: impl FnOnce(&mut Writer)) -> bool {
        if self.at + len > self.size {
            return true;
        }
        write(&mut Writer::new(&mut self.out[self.at..self.at + len]));
        self.at += len;
        false
    }
}

/// Native-endian encoder of the kernel's FUSE structures into a buffer.
pub(crate) struct Writer<'a> {
    buf: &'a mut [u8],
    /// Bytes written so far.
    pub(crate) at: usize,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Writer<'a> {
        Writer { buf, at: 0 }
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.bytes(&v.to_ne_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.bytes(&v.to_ne_bytes());
    }
    pub(crate) fn zeros(&mut self, n: usize) {
        self.buf[self.at..self.at + n].fill(0);
        self.at += n;
    }
}

/// Seconds and nanoseconds since the epoch, as the kernel stores them.
fn split_time(t: SystemTime) -> (u64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs(), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (mut s, mut n) = (-(d.as_secs() as i64), d.subsec_nanos());
            if n > 0 {
                s -= 1;
                n = 1_000_000_000 - n;
            }
            (s as u64, n)
        }
    }
}

fn mode(attr: &FileAttr) -> u32 {
    let kind = match attr.kind {
        FileType::Directory => libc::S_IFDIR,
        FileType::Symlink => libc::S_IFLNK,
        FileType::NamedPipe => libc::S_IFIFO,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::Socket => libc::S_IFSOCK,
        FileType::RegularFile => libc::S_IFREG,
    };
    kind | u32::from(attr.perm)
}

fn dtype(kind: FileType) -> u32 {
    u32::from(match kind {
        FileType::Directory => libc::DT_DIR,
        FileType::Symlink => libc::DT_LNK,
        FileType::NamedPipe => libc::DT_FIFO,
        FileType::CharDevice => libc::DT_CHR,
        FileType::BlockDevice => libc::DT_BLK,
        FileType::Socket => libc::DT_SOCK,
        FileType::RegularFile => libc::DT_REG,
    })
}

/// `struct fuse_attr`.
pub(crate) fn put_attr(w: &mut Writer, a: &FileAttr) {
    let (at, atn) = split_time(a.atime);
    let (mt, mtn) = split_time(a.mtime);
    let (ct, ctn) = split_time(a.ctime);
    for v in [a.ino.0, a.size, a.blocks, at, mt, ct] {
        w.u64(v);
    }
    for v in [
        atn,
        mtn,
        ctn,
        mode(a),
        a.nlink,
        a.uid,
        a.gid,
        a.rdev,
        a.blksize,
        a.flags,
    ] {
        w.u32(v);
    }
}

/// The validity half of `struct fuse_attr_out`.
pub(crate) fn put_ttl_attr_out(w: &mut Writer, ttl: Duration) {
    w.u64(ttl.as_secs());
    w.u32(ttl.subsec_nanos());
    w.u32(0);
}

/// `struct fuse_attr_out` into `out`; returns its length.
pub(crate) fn put_attr_out(out: &mut [u8], a: &FileAttr, ttl: Duration) -> usize {
    let mut w = Writer::new(out);
    put_ttl_attr_out(&mut w, ttl);
    put_attr(&mut w, a);
    w.at
}

/// `struct fuse_entry_out`.
pub(crate) fn put_entry_out(w: &mut Writer, a: &FileAttr, ttl: Duration) {
    w.u64(a.ino.0);
    w.u64(0); // generation
    w.u64(ttl.as_secs());
    w.u64(ttl.as_secs());
    w.u32(ttl.subsec_nanos());
    w.u32(ttl.subsec_nanos());
    put_attr(w, a);
}

/// `struct fuse_entry_out` into `out`; returns its length.
pub(crate) fn put_entry(out: &mut [u8], a: &FileAttr, ttl: Duration) -> usize {
    let mut w = Writer::new(out);
    put_entry_out(&mut w, a, ttl);
    w.at
}

/// `struct fuse_dirent` and its name, zero-padded to the writer's end.
pub(crate) fn put_dirent(w: &mut Writer, ino: u64, next: u64, kind: FileType, name: &[u8]) {
    w.u64(ino);
    w.u64(next);
    w.u32(name.len() as u32);
    w.u32(dtype(kind));
    w.bytes(name);
    let pad = w.buf.len() - w.at;
    w.zeros(pad);
}

/// `struct fuse_statfs_out` of a filesystem without free space: `files`
/// inodes, blocks of `bsize`, names up to `namelen`; returns its length.
pub(crate) fn put_statfs(out: &mut [u8], files: u64, bsize: u32, namelen: u32) -> usize {
    let mut w = Writer::new(out);
    for v in [0, 0, 0, files, 0] {
        w.u64(v);
    }
    w.u32(bsize);
    w.u32(namelen);
    w.u32(bsize); // frsize
    w.zeros(4 + 24);
    w.at
}

/// `struct fuse_getxattr_out`: the size a list or value would take.
pub(crate) fn put_xattr_size(out: &mut [u8], size: u32) -> usize {
    let mut w = Writer::new(out);
    w.u32(size);
    w.u32(0);
    w.at
}

/// The head of a page store (FUSE_NOTIFY_STORE) of `size` bytes into inode
/// `ino` from offset 0: `fuse_out_header {len, error, unique = 0}`, then
/// `fuse_notify_store_out {nodeid, offset = 0, size, padding}`. The data
/// follows it; `len` counts both.
pub(crate) fn notify_store_head(ino: u64, size: u32) -> [u8; 40] {
    let mut head = [0u8; 40];
    let mut w = Writer::new(&mut head);
    w.u32(40 + size);
    w.bytes(&NOTIFY_STORE.to_ne_bytes());
    w.zeros(8); // unique
    w.u64(ino);
    w.zeros(8); // offset
    w.u32(size);
    w.zeros(4); // padding
    head
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attr::file_attr;
    use crate::inode::{Ino, NodeKind};
    use crate::store::EntryKind;

    #[test]
    fn records_have_the_kernel_sizes() {
        let attr = file_attr(Ino(7), NodeKind::Entry(EntryKind::Exec), 10, 1_787_270_400);
        let mut buf = [0u8; 256];
        assert_eq!(put_entry(&mut buf, &attr, Duration::from_secs(5)), 128);
        let mut w = Writer::new(&mut buf);
        put_ttl_attr_out(&mut w, Duration::ZERO);
        put_attr(&mut w, &attr);
        assert_eq!(w.at, 104);
        // mode at offset 16 + 6*8 + 3*4 of the attr_out.
        assert_eq!(u32_at(&buf, 16 + 60), libc::S_IFREG | 0o755);
        assert_eq!(dirent_len(1), 32);
        assert_eq!(dirent_len(8), 32);
        assert_eq!(dirent_len(9), 40);
        assert_eq!(dirent_len(ENTRY_OUT + 3), 160);
    }

    #[test]
    fn times_before_the_epoch_split_like_timespec() {
        let t = UNIX_EPOCH - Duration::new(1, 250_000_000);
        assert_eq!(split_time(t), ((-2i64) as u64, 750_000_000));
        assert_eq!(split_time(UNIX_EPOCH + Duration::new(3, 5)), (3, 5));
    }
}
