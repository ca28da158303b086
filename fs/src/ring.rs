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
//! Every request is answered by the [`GitFs`] answer of the same name
//! ([`crate::answers`]), as through fuser; this module only decodes the
//! request and encodes the answer ([`crate::wire`]).
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
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use tracing::{debug, trace, warn};

use crate::answers::{Answer, Declined};
use crate::filesystem::GitFs;
use crate::inode::Ino;
use crate::wire::{
    copy, dirent_len, put_attr_out, put_dirent, put_entry, put_entry_out, put_statfs,
    put_xattr_size, u32_at, u64_at, DirBuf, ENTRY_OUT, MAX_WRITE,
};

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

type Ring = IoUring<squeue::Entry128, cqueue::Entry>;

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
    let result = register(&mut ring, &entries, fd, q);
    let ok = result.is_ok();
    let _ = registered.send(result);
    if ok {
        debug!(qid, "io_uring queue registered");
        serve(&mut ring, &mut entries, &fs, fd, q, served);
        debug!(qid, "io_uring queue done");
    }
    // Dropping the ring cancels what is still armed; the buffers go after it.
    drop(ring);
    drop(entries);
}

/// Register every entry of `entries` on connection `fd` as queue `q`.
fn register(ring: &mut Ring, entries: &[Entry], fd: i32, q: u16) -> std::io::Result<()> {
    {
        let mut sq = ring.submission();
        for (i, e) in entries.iter().enumerate() {
            // SAFETY: the SQE points at `e.iov`, which (like the buffers it
            // names) lives until the ring is dropped at the end of
            // `queue_thread`, after the kernel released the entries.
            if unsafe { sq.push(&register_sqe(fd, q, e, i as u64)) }.is_err() {
                return Err(std::io::Error::other("io_uring queue full"));
            }
        }
    }
    ring.submit()?;
    // A refused registration completes at once; an accepted one only when a
    // request arrives.
    let refused = ring
        .completion()
        .find(|c| c.result() < 0)
        .map(|c| std::io::Error::from_raw_os_error(-c.result()));
    refused.map_or(Ok(()), Err)
}

/// Answer requests as they complete entries, until the connection ends.
fn serve(ring: &mut Ring, entries: &mut [Entry], fs: &GitFs, fd: i32, q: u16, served: &AtomicU64) {
    let mut done: Vec<(u64, i32)> = Vec::with_capacity(DEPTH);
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => {
                warn!(qid = q, error = %e, "io_uring queue stopped");
                return;
            }
        }
        done.clear();
        done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        let mut stop = false;
        for &(tag, res) in &done {
            if res < 0 {
                // The connection ended (unmount) or the ring is going away.
                if res != -libc::ENOTCONN && res != -libc::ECANCELED {
                    warn!(qid = q, error = %std::io::Error::from_raw_os_error(-res), "io_uring entry failed");
                }
                stop = true;
                continue;
            }
            let Some(entry) = entries.get_mut(tag as usize) else {
                continue;
            };
            let commit_id = answer(fs, entry);
            served.fetch_add(1, Ordering::Relaxed);
            let sqe = commit_sqe(fd, q, commit_id, tag);
            // SAFETY: as for registration; COMMIT_AND_FETCH re-arms the same
            // entry with the buffers registered before.
            if unsafe { ring.submission().push(&sqe) }.is_err() {
                warn!(qid = q, "io_uring submission queue full");
                stop = true;
            }
        }
        if stop {
            return;
        }
    }
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
    // payloads used (the names of LOOKUP and GETXATTR) are copied out first.
    let name: Vec<u8> = if opcode == LOOKUP || opcode == GETXATTR {
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

impl Request<'_> {
    /// The offset of READ, READDIR and READDIRPLUS.
    fn offset(&self) -> u64 {
        u64_at(self.op_in, 8)
    }

    /// The size asked for by READ, READDIR and READDIRPLUS.
    fn size(&self) -> u32 {
        u32_at(self.op_in, 16)
    }

    /// The first u32 of the operation's header: GETXATTR's and LISTXATTR's
    /// size, ACCESS's mask.
    fn first_u32(&self) -> u32 {
        u32_at(self.op_in, 0)
    }
}

/// Run one request against `fs`, writing the reply into `out`; returns its
/// length. Every answer is [`GitFs`]'s, the same as through fuser.
fn dispatch(fs: &GitFs, r: &Request, out: &mut [u8]) -> Answer<usize> {
    let ino = r.ino;
    match r.opcode {
        LOOKUP => {
            let (attr, ttl) = fs.answer_lookup(ino, OsStr::from_bytes(r.payload))?;
            Ok(put_entry(out, &attr, ttl))
        }
        GETATTR => {
            let (attr, ttl) = fs.answer_getattr(ino)?;
            Ok(put_attr_out(out, &attr, ttl))
        }
        READLINK => Ok(copy(out, &fs.answer_readlink(ino)?)),
        READ => {
            let size = r.size().min(PAYLOAD as u32);
            let (blob, range) = fs.answer_read(ino, r.offset(), size)?;
            Ok(copy(out, &blob[range]))
        }
        READDIR => readdir(fs, r, out),
        READDIRPLUS => readdirplus(fs, r, out),
        STATFS => {
            let s = fs.answer_statfs();
            Ok(put_statfs(out, s.files, s.block_size, s.name_len))
        }
        GETXATTR => Err(fs.answer_getxattr(ino, OsStr::from_bytes(r.payload))),
        LISTXATTR => {
            fs.answer_listxattr(ino)?;
            match r.first_u32() {
                0 => Ok(put_xattr_size(out, 0)),
                _ => Ok(0),
            }
        }
        ACCESS => fs
            .answer_access(ino, r.first_u32() & libc::W_OK as u32 != 0)
            .map(|()| 0),
        RELEASE | RELEASEDIR => fs.answer_release(ino).map(|()| 0),
        op => Err(fs.decline(declined(op), ino)),
    }
}

/// READDIR: entries as `fuse_dirent`s, as many as fit the size asked for.
fn readdir(fs: &GitFs, r: &Request, out: &mut [u8]) -> Answer<usize> {
    let mut buf = DirBuf::new(out, r.size());
    fs.answer_readdir(r.ino, r.offset(), |it| {
        buf.push(dirent_len(it.name.len()), |w| {
            put_dirent(w, it.ino.0, it.next, it.kind, it.name);
        })
    })?;
    Ok(buf.at)
}

/// READDIRPLUS: entries as `fuse_direntplus`es, as many as fit.
fn readdirplus(fs: &GitFs, r: &Request, out: &mut [u8]) -> Answer<usize> {
    let mut buf = DirBuf::new(out, r.size());
    fs.answer_readdirplus(r.ino, r.offset(), |it, attr, ttl| {
        buf.push(dirent_len(ENTRY_OUT + it.name.len()), |w| {
            put_entry_out(w, attr, ttl);
            put_dirent(w, it.ino.0, it.next, attr.kind, it.name);
        })
    })?;
    Ok(buf.at)
}

/// Why a request other than those [`dispatch`] answers is refused.
fn declined(opcode: u32) -> Declined {
    match opcode {
        OPEN => Declined::Unneeded("open"),
        OPENDIR => Declined::Unneeded("opendir"),
        FLUSH => Declined::Unneeded("flush"),
        IOCTL => Declined::NotTerminal,
        SETATTR => Declined::ReadOnly("setattr"),
        SYMLINK => Declined::ReadOnly("symlink"),
        MKNOD => Declined::ReadOnly("mknod"),
        MKDIR => Declined::ReadOnly("mkdir"),
        UNLINK => Declined::ReadOnly("unlink"),
        RMDIR => Declined::ReadOnly("rmdir"),
        RENAME => Declined::ReadOnly("rename"),
        LINK => Declined::ReadOnly("link"),
        WRITE => Declined::ReadOnly("write"),
        SETXATTR => Declined::ReadOnly("setxattr"),
        REMOVEXATTR => Declined::ReadOnly("removexattr"),
        CREATE => Declined::ReadOnly("create"),
        FALLOCATE => Declined::ReadOnly("fallocate"),
        RENAME2 => Declined::ReadOnly("rename2"),
        COPY_FILE_RANGE => Declined::ReadOnly("copy_file_range"),
        TMPFILE => Declined::ReadOnly("tmpfile"),
        op => Declined::Unknown(op),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_possible_cpu_list_is_counted() {
        assert!(possible_cpus() >= 1);
    }
}
