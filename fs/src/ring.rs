//! FUSE over io_uring: one request queue per CPU, each served by a thread
//! pinned to that CPU.
//!
//! Through `/dev/fuse` every request wakes a daemon thread that the scheduler
//! usually puts on another CPU than the reader, and the reply wakes the reader
//! back across CPUs. On a 2-vCPU VM that round trip measured about 45 µs, and
//! 16 µs when reader and daemon shared a CPU; a cold walk of a portage tree
//! makes some 80,000 of them. With io_uring (Linux 6.14+, module parameter
//! `fuse.enable_uring=1`) the kernel queues each request on the queue of the
//! CPU that made it, so both wake-ups stay on one CPU.
//!
//! Protocol (include/uapi/linux/fuse.h): after INIT, each queue thread
//! registers ring entries (`FUSE_IO_URING_CMD_REGISTER`, a 128-byte SQE whose
//! command names the queue, and two iovecs: a 288-byte header and a payload
//! buffer). A request completes the entry's command: the header holds
//! `fuse_in_header`, the operation's own header and the commit id, the payload
//! the rest (a name for LOOKUP). The thread writes `fuse_out_header` into the
//! header, the reply into the payload, and sends `COMMIT_AND_FETCH`, which
//! delivers the reply and re-arms the entry. FORGET and INTERRUPT still come
//! through `/dev/fuse` and fuser's loop, and so do notifications.
//!
//! The kernel holds every request back until every queue has an entry, and
//! falls back to `/dev/fuse` for good if a registration fails; the threads are
//! therefore started, each with its ring, before the mount asks for io_uring
//! at INIT, and told to register right after.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use tracing::{debug, trace, warn};

use crate::filesystem::{GitFs, MAX_WRITE};
use crate::inode::Ino;

/// Where the kernel says whether FUSE over io_uring may be used.
pub const ENABLE_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// Ring entries per queue: requests one CPU can have in flight at once.
const DEPTH: usize = 4;
/// `sizeof(struct fuse_uring_req_header)`: in/out header, op header, entry
/// info.
const HEADER: usize = 128 + 128 + 32;
/// Offsets in the header buffer.
const OP_IN: usize = 128;
const ENT_IN_OUT: usize = 256;
/// Payload buffer: the largest request or reply (`MAX_WRITE`, which is also
/// the 256 pages of the largest read).
const PAYLOAD: usize = MAX_WRITE as usize;

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

// Opcodes (fuse_opcode).
const LOOKUP: u32 = 1;
const GETATTR: u32 = 3;
const SETATTR: u32 = 4;
const READLINK: u32 = 5;
const SYMLINK: u32 = 6;
const MKNOD: u32 = 8;
const MKDIR: u32 = 9;
const UNLINK: u32 = 10;
const RMDIR: u32 = 11;
const RENAME: u32 = 12;
const LINK: u32 = 13;
const OPEN: u32 = 14;
const READ: u32 = 15;
const WRITE: u32 = 16;
const STATFS: u32 = 17;
const RELEASE: u32 = 18;
const SETXATTR: u32 = 21;
const GETXATTR: u32 = 22;
const LISTXATTR: u32 = 23;
const REMOVEXATTR: u32 = 24;
const FLUSH: u32 = 25;
const OPENDIR: u32 = 27;
const READDIR: u32 = 28;
const RELEASEDIR: u32 = 29;
const ACCESS: u32 = 34;
const CREATE: u32 = 35;
const IOCTL: u32 = 39;
const FALLOCATE: u32 = 43;
const READDIRPLUS: u32 = 44;
const RENAME2: u32 = 45;
const COPY_FILE_RANGE: u32 = 47;
const TMPFILE: u32 = 51;

/// Whether the running kernel lets FUSE use io_uring (the module parameter is
/// read when a mount starts).
pub fn kernel_allows() -> bool {
    std::fs::read_to_string(ENABLE_PARAM).is_ok_and(|v| v.trim() == "Y")
}

/// The CPUs the kernel may queue requests for (`num_possible_cpus()`).
fn possible_cpus() -> usize {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    let n = text
        .trim()
        .split(',')
        .filter_map(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?))
        })
        .map(|(a, b)| b + 1 - a.min(b + 1))
        .sum::<usize>();
    if n == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        n
    }
}

/// What a queue thread is told once the mount is up.
enum Go {
    /// Register on this device and serve this filesystem.
    Serve(OwnedFd, Arc<GitFs>),
    /// The kernel declined (or the mount failed): exit.
    Exit,
}

/// The queue threads of one mount.
#[derive(Debug)]
pub struct Rings {
    go: Vec<mpsc::Sender<Go>>,
    registered: mpsc::Receiver<std::io::Result<()>>,
    handles: Vec<JoinHandle<()>>,
    served: Arc<AtomicU64>,
}

impl std::fmt::Debug for Go {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Go::Serve(..) => "Serve",
            Go::Exit => "Exit",
        })
    }
}

impl Rings {
    /// Start one thread per possible CPU, each pinned to its CPU with its ring
    /// set up and its buffers allocated, waiting for [`Rings::serve`].
    pub fn prepare() -> std::io::Result<Rings> {
        let queues = possible_cpus();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (reg_tx, registered) = mpsc::channel();
        let served = Arc::new(AtomicU64::new(0));
        let mut rings = Rings {
            go: Vec::new(),
            registered,
            handles: Vec::new(),
            served: served.clone(),
        };
        for qid in 0..queues {
            let (go_tx, go_rx) = mpsc::channel();
            let (ready_tx, reg_tx, served) = (ready_tx.clone(), reg_tx.clone(), served.clone());
            let handle = std::thread::Builder::new()
                .name(format!("portroot-ring{qid}"))
                .spawn(move || queue_thread(qid, &go_rx, &ready_tx, &reg_tx, &served))?;
            rings.go.push(go_tx);
            rings.handles.push(handle);
        }
        drop(ready_tx);
        for _ in 0..queues {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(std::io::Error::other("an io_uring queue thread died")),
            }
        }
        Ok(rings)
    }

    /// Have every queue register on `dev` (the session's `/dev/fuse`) and
    /// serve `fs`; returns once all are registered, or the first error (the
    /// kernel then serves through `/dev/fuse`).
    pub fn serve(&mut self, dev: &OwnedFd, fs: &Arc<GitFs>) -> std::io::Result<()> {
        for go in &self.go {
            let fd = dev.try_clone()?;
            let _ = go.send(Go::Serve(fd, fs.clone()));
        }
        for _ in 0..self.go.len() {
            match self.registered.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(std::io::Error::other("an io_uring queue did not register")),
            }
        }
        Ok(())
    }

    /// The number of queues.
    pub fn queues(&self) -> usize {
        self.go.len()
    }

    /// Requests answered through the rings so far.
    pub fn served(&self) -> Arc<AtomicU64> {
        self.served.clone()
    }

    /// Join the threads. Registered ones end when the connection does
    /// (unmount); waiting ones are told to exit.
    pub fn join(mut self) {
        for go in self.go.drain(..) {
            let _ = go.send(Go::Exit);
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Rings {
    fn drop(&mut self) {
        for go in self.go.drain(..) {
            let _ = go.send(Go::Exit);
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// One ring entry's buffers. The kernel keeps pointers into them while the
/// entry is registered, so they live (boxed, never moved) as long as the ring.
struct Entry {
    header: Box<[u8; HEADER]>,
    payload: Box<[u8]>,
    iov: Box<[libc::iovec; 2]>,
}

impl Entry {
    fn new() -> Entry {
        let mut header = Box::new([0u8; HEADER]);
        // Zeroed memory from calloc: pages are touched only as replies use them.
        let mut payload = vec![0u8; PAYLOAD].into_boxed_slice();
        let iov = Box::new([
            libc::iovec {
                iov_base: header.as_mut_ptr().cast(),
                iov_len: HEADER,
            },
            libc::iovec {
                iov_base: payload.as_mut_ptr().cast(),
                iov_len: PAYLOAD,
            },
        ]);
        Entry {
            header,
            payload,
            iov,
        }
    }
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes within it for
    // cpu < CPU_SETSIZE, and sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return;
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            debug!(cpu, error = %std::io::Error::last_os_error(), "io_uring queue thread left unpinned");
        }
    }
}

/// The 80 command bytes of a `fuse_uring_cmd_req`.
fn cmd_req(commit_id: u64, qid: u16) -> [u8; 80] {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    cmd
}

fn register_sqe(fd: i32, qid: u16, entry: &Entry, tag: u64) -> squeue::Entry128 {
    let sqe = opcode::UringCmd80::new(types::Fd(fd), CMD_REGISTER)
        .cmd(cmd_req(0, qid))
        .addr(Some(entry.iov.as_ptr() as u64))
        .build()
        .user_data(tag);
    with_len(sqe, 2)
}

/// Set the SQE's `len` field (the iovec count REGISTER wants), which the
/// io-uring crate's `UringCmd80` has no setter for.
fn with_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // SAFETY: `Entry128` is `#[repr(C)]`, 128 bytes: the kernel's
    // `io_uring_sqe` followed by the extra command bytes; `len` is the u32
    // at byte 24 of `io_uring_sqe`. Every bit pattern is a valid SQE value.
    unsafe {
        let mut raw: [u8; 128] = std::mem::transmute(sqe);
        raw[24..28].copy_from_slice(&len.to_ne_bytes());
        std::mem::transmute::<[u8; 128], squeue::Entry128>(raw)
    }
}

fn commit_sqe(fd: i32, qid: u16, commit_id: u64, tag: u64) -> squeue::Entry128 {
    opcode::UringCmd80::new(types::Fd(fd), CMD_COMMIT_AND_FETCH)
        .cmd(cmd_req(commit_id, qid))
        .build()
        .user_data(tag)
}

fn build_ring() -> std::io::Result<IoUring<squeue::Entry128, cqueue::Entry>> {
    // Task work (handing a request to this thread) runs when the thread waits
    // for completions, which is all it does between requests.
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(2 * DEPTH as u32)
        .or_else(|_| IoUring::builder().build(2 * DEPTH as u32))
}

fn queue_thread(
    qid: usize,
    go: &mpsc::Receiver<Go>,
    ready: &mpsc::Sender<std::io::Result<()>>,
    registered: &mpsc::Sender<std::io::Result<()>>,
    served: &AtomicU64,
) {
    pin_to_cpu(qid);
    let mut ring = match build_ring() {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut entries: Vec<Entry> = (0..DEPTH).map(|_| Entry::new()).collect();
    let _ = ready.send(Ok(()));
    let Ok(Go::Serve(dev, fs)) = go.recv() else {
        return;
    };
    let fd = dev.as_raw_fd();
    let q = qid as u16;
    {
        let mut sq = ring.submission();
        for (i, e) in entries.iter().enumerate() {
            // SAFETY: the SQE points at `e.iov`, which (like the buffers it
            // names) lives until the ring is dropped at the end of this
            // function, after the kernel released the entries.
            if unsafe { sq.push(&register_sqe(fd, q, e, i as u64)) }.is_err() {
                let _ = registered.send(Err(std::io::Error::other("io_uring queue full")));
                return;
            }
        }
    }
    if let Err(e) = ring.submit() {
        let _ = registered.send(Err(e));
        return;
    }
    // A refused registration completes at once; an accepted one only when a
    // request arrives.
    let refused = ring
        .completion()
        .find(|c| c.result() < 0)
        .map(|c| std::io::Error::from_raw_os_error(-c.result()));
    if let Some(e) = refused {
        let _ = registered.send(Err(e));
        return;
    }
    let _ = registered.send(Ok(()));
    debug!(qid, "io_uring queue registered");

    let mut done: Vec<(u64, i32)> = Vec::with_capacity(DEPTH);
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => {
                warn!(qid, error = %e, "io_uring queue stopped");
                break;
            }
        }
        done.clear();
        done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        let mut stop = false;
        for &(tag, res) in &done {
            if res < 0 {
                // The connection ended (unmount) or the ring is going away.
                if res != -libc::ENOTCONN && res != -libc::ECANCELED {
                    warn!(qid, error = %std::io::Error::from_raw_os_error(-res), "io_uring entry failed");
                }
                stop = true;
                continue;
            }
            let Some(entry) = entries.get_mut(tag as usize) else {
                continue;
            };
            let commit_id = answer(&fs, entry);
            served.fetch_add(1, Ordering::Relaxed);
            let sqe = commit_sqe(fd, q, commit_id, tag);
            // SAFETY: as for registration; COMMIT_AND_FETCH re-arms the same
            // entry with the buffers registered before.
            if unsafe { ring.submission().push(&sqe) }.is_err() {
                warn!(qid, "io_uring submission queue full");
                stop = true;
            }
        }
        if stop {
            break;
        }
    }
    debug!(qid, "io_uring queue done");
    // Dropping the ring cancels what is still armed; the buffers go after it.
    drop(ring);
    drop(entries);
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Answer the request in `entry`: parse it, run it, write the reply. Returns
/// the commit id.
fn answer(fs: &GitFs, entry: &mut Entry) -> u64 {
    let h = &entry.header[..];
    let opcode = u32_at(h, 4);
    let unique = u64_at(h, 8);
    let nodeid = u64_at(h, 16);
    let commit_id = u64_at(h, ENT_IN_OUT + 8);
    let in_len = (u32_at(h, ENT_IN_OUT + 16) as usize).min(PAYLOAD);
    let op_in: [u8; 128] = h[OP_IN..OP_IN + 128].try_into().expect("128 bytes");
    // The reply goes into the same payload buffer, so the only request
    // payload used (LOOKUP's name) is copied out first.
    let name: Vec<u8> = if opcode == LOOKUP {
        let p = &entry.payload[..in_len];
        p.split(|&b| b == 0).next().unwrap_or(&[]).to_vec()
    } else {
        Vec::new()
    };
    let request = Request {
        opcode,
        ino: Ino(nodeid),
        op_in: &op_in,
        payload: &name,
    };
    let (error, len) = match dispatch(fs, &request, &mut entry.payload) {
        Ok(len) => (0i32, len),
        Err(errno) => (-errno.code(), 0),
    };
    trace!(opcode, nodeid, error, len, "io_uring request");
    let h = &mut entry.header[..];
    h[0..4].copy_from_slice(&(16 + len as u32).to_ne_bytes());
    h[4..8].copy_from_slice(&error.to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    h[ENT_IN_OUT + 16..ENT_IN_OUT + 20].copy_from_slice(&(len as u32).to_ne_bytes());
    commit_id
}

/// A request as the ring delivers it.
struct Request<'a> {
    opcode: u32,
    ino: Ino,
    op_in: &'a [u8; 128],
    payload: &'a [u8],
}

/// Run one request against `fs`, writing the reply into `out`; returns its
/// length. The same answers as the fuser adapters in `filesystem`.
fn dispatch(fs: &GitFs, r: &Request, out: &mut [u8]) -> Result<usize, Errno> {
    let ino = r.ino;
    let fail = |op: &str, e: crate::FsError| fs.reply_err(op, ino.0, &e);
    match r.opcode {
        LOOKUP => {
            let attr = fs
                .lookup(ino, OsStr::from_bytes(r.payload))
                .map_err(|e| fail("lookup", e))?;
            let ttl = fs.ttl(Ino(attr.ino.0), ino);
            Ok(put_entry(out, &attr, ttl))
        }
        GETATTR => {
            let attr = fs.getattr(ino).map_err(|e| fail("getattr", e))?;
            let parent = fs.node(ino).map_or(Ino::ROOT, |n| n.1);
            let ttl = fs.ttl(ino, parent);
            let mut w = Writer::new(out);
            put_ttl_attr_out(&mut w, ttl);
            put_attr(&mut w, &attr);
            Ok(w.at)
        }
        READLINK => {
            let target = fs.readlink(ino).map_err(|e| fail("readlink", e))?;
            Ok(copy(out, &target))
        }
        READ => {
            let offset = u64_at(r.op_in, 8);
            let size = u32_at(r.op_in, 16).min(PAYLOAD as u32);
            let (blob, range) = fs.read(ino, offset, size).map_err(|e| fail("read", e))?;
            Ok(copy(out, &blob[range]))
        }
        READDIR => {
            let offset = u64_at(r.op_in, 8);
            let mut buf = DirBuf::new(out, u32_at(r.op_in, 16));
            fs.readdir(ino, offset, |it| {
                buf.push(dirent_len(it.name.len()), |w| {
                    put_dirent(w, it.ino.0, it.next, it.kind, it.name);
                })
            })
            .map_err(|e| fail("readdir", e))?;
            Ok(buf.at)
        }
        READDIRPLUS => {
            let offset = u64_at(r.op_in, 8);
            let mut buf = DirBuf::new(out, u32_at(r.op_in, 16));
            fs.readdirplus(ino, offset, |it, attr, ttl| {
                buf.push(dirent_len(ENTRY_OUT + it.name.len()), |w| {
                    put_entry_out(w, attr, ttl);
                    put_dirent(w, it.ino.0, it.next, attr.kind, it.name);
                })
            })
            .map_err(|e| fail("readdirplus", e))?;
            Ok(buf.at)
        }
        STATFS => {
            let mut w = Writer::new(out);
            for v in [0, 0, 0, fs.inode_count() as u64, 0] {
                w.u64(v);
            }
            w.u32(crate::attr::BLOCK_SIZE);
            w.u32(255);
            w.u32(crate::attr::BLOCK_SIZE);
            w.zeros(4 + 24);
            Ok(w.at)
        }
        GETXATTR => match fs.getxattr(ino) {
            Ok(()) => Err(Errno::NO_XATTR),
            Err(e) => Err(fail("getxattr", e)),
        },
        LISTXATTR => {
            fs.node(ino).map_err(|e| fail("listxattr", e))?;
            if u32_at(r.op_in, 0) == 0 {
                let mut w = Writer::new(out);
                w.u32(0);
                w.u32(0);
                Ok(w.at)
            } else {
                Ok(0)
            }
        }
        ACCESS => {
            fs.node(ino).map_err(|e| fail("access", e))?;
            if u32_at(r.op_in, 0) & libc::W_OK as u32 != 0 {
                Err(Errno::EROFS)
            } else {
                Ok(0)
            }
        }
        // The kernel stops sending these after the first ENOSYS and then
        // keeps its page and directory caches across opens.
        OPEN | OPENDIR | FLUSH => Err(Errno::ENOSYS),
        RELEASE | RELEASEDIR => Ok(0),
        // "Not a terminal", as the fuser adapter answers (Python's isatty).
        IOCTL => Err(Errno::ENOTTY),
        SETATTR | SYMLINK | MKNOD | MKDIR | UNLINK | RMDIR | RENAME | LINK | WRITE | SETXATTR
        | REMOVEXATTR | CREATE | FALLOCATE | RENAME2 | COPY_FILE_RANGE | TMPFILE => {
            Err(Errno::EROFS)
        }
        _ => Err(Errno::ENOSYS),
    }
}

/// `sizeof(struct fuse_entry_out)`.
const ENTRY_OUT: usize = 40 + ATTR;
/// `sizeof(struct fuse_attr)`.
const ATTR: usize = 88;

/// The size of a `fuse_dirent` (24 bytes and the name) padded to 8 bytes;
/// `extra` is the name length plus any header before the dirent.
fn dirent_len(extra: usize) -> usize {
    (24 + extra).div_ceil(8) * 8
}

fn copy(out: &mut [u8], data: &[u8]) -> usize {
    let n = data.len().min(out.len());
    out[..n].copy_from_slice(&data[..n]);
    n
}

/// Little cursor over a reply buffer (native byte order, like the kernel).
/// A READDIR(PLUS) reply being filled, entry by entry, up to the size the
/// kernel asked for.
struct DirBuf<'a> {
    out: &'a mut [u8],
    size: usize,
    /// Bytes written so far.
    at: usize,
}

impl<'a> DirBuf<'a> {
    fn new(out: &'a mut [u8], asked: u32) -> DirBuf<'a> {
        let size = (asked as usize).min(out.len());
        DirBuf { out, size, at: 0 }
    }

    /// Write an entry of `len` bytes with `write`; true (nothing written) when
    /// it does not fit, which ends the listing callback.
    fn push(&mut self, len: usize, write: impl FnOnce(&mut Writer)) -> bool {
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
    at: usize,
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
fn put_attr(w: &mut Writer, a: &FileAttr) {
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
fn put_ttl_attr_out(w: &mut Writer, ttl: Duration) {
    w.u64(ttl.as_secs());
    w.u32(ttl.subsec_nanos());
    w.u32(0);
}

/// `struct fuse_entry_out`.
fn put_entry_out(w: &mut Writer, a: &FileAttr, ttl: Duration) {
    w.u64(a.ino.0);
    w.u64(0); // generation
    w.u64(ttl.as_secs());
    w.u64(ttl.as_secs());
    w.u32(ttl.subsec_nanos());
    w.u32(ttl.subsec_nanos());
    put_attr(w, a);
}

fn put_entry(out: &mut [u8], a: &FileAttr, ttl: Duration) -> usize {
    let mut w = Writer::new(out);
    put_entry_out(&mut w, a, ttl);
    w.at
}

/// `struct fuse_dirent` and its name, zero-padded to the writer's end.
fn put_dirent(w: &mut Writer, ino: u64, next: u64, kind: FileType, name: &[u8]) {
    w.u64(ino);
    w.u64(next);
    w.u32(name.len() as u32);
    w.u32(dtype(kind));
    w.bytes(name);
    let pad = w.buf.len() - w.at;
    w.zeros(pad);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attr::file_attr;
    use crate::inode::NodeKind;
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

    #[test]
    fn the_possible_cpu_list_is_counted() {
        assert!(possible_cpus() >= 1);
    }
}
