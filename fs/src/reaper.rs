//! A small watcher process that removes the mount if the daemon dies without
//! unmounting, through either transport.
//!
//! It replaces fusermount3's `auto_unmount` helper, for three reasons. That
//! helper waits for the daemon's socket to close, then unmounts only if
//! opening the mount point says ENOTCONN. Through io_uring the queued
//! commands keep the device open until the kernel's asynchronous ring teardown
//! has run (measured: between 0.5 and 2 s after a SIGKILL), so the helper finds
//! a live mount, leaves it, and the mount turns into a dead ENOTCONN directory
//! a moment later. It unmounts by path, so when the old mount was already
//! removed and a new one made on the same path, it can take the new one. And
//! it needs the setuid `fusermount3` of the fuse3 package, which a fresh
//! machine lacks. Through /dev/fuse the reaper works the same way: the kernel
//! aborts the connection when the daemon's last descriptor closes, the pipe
//! ends with the daemon, and the mount is detached.
//!
//! The reaper is forked before the mount is made, and told which mount is
//! ours once it is: a daemon killed in between (while the kernel and the
//! daemon shake hands, or while the io_uring queues register) would otherwise
//! leave its mount with nobody to remove it. If the daemon dies before it
//! could say, the reaper removes the topmost mount on the path only if it is
//! not the one that was there before and `/proc/self/mountinfo` names it a
//! FUSE mount with our source (`portroot:REPO@REF`). It keeps nothing of the
//! daemon open but
//! the read end of a pipe whose write end only the daemon holds (close-on-exec,
//! so no child of the daemon keeps it either). When the read ends (the daemon
//! exited, however it died) it looks at the mount point without sending the
//! filesystem a request (`statx` with `AT_STATX_DONT_SYNC`) and, if the
//! topmost mount there is still the one it was forked for (same mount id and
//! device), detaches it. After a clean unmount the mount is gone and it just
//! exits. The child runs only async-signal-safe system calls on memory
//! prepared before the fork, as the parent has threads. It rewrites its
//! command line to `portroot-reaper MOUNTPOINT`, so `ps` and `pgrep -f` tell
//! it from the daemon it was forked from.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use tracing::debug;

/// The running reaper: dropping it closes the pipe and collects the process.
#[derive(Debug)]
pub struct Reaper {
    pid: libc::pid_t,
    pipe: Option<OwnedFd>,
}

/// Which mount is at a path: what the reaper guards, and what the daemon
/// checks before it unmounts by path (never someone else's mount made on
/// the same path after ours was removed from outside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MountId {
    mnt_id: u64,
    /// Whether `mnt_id` is the never-reused 64-bit id (Linux 6.8+).
    unique: bool,
    dev: (u32, u32),
}

impl MountId {
    /// The mount now at `path` (the topmost one).
    pub(crate) fn at(path: &Path) -> std::io::Result<MountId> {
        use std::os::unix::ffi::OsStrExt;
        let path = CString::new(path.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        mount_id(&path)
    }

    /// The FUSE connection number: the minor of the mount's device, as
    /// /sys/fs/fuse/connections names it.
    pub(crate) fn connection(&self) -> u32 {
        self.dev.1
    }
}

/// `statx` of `path` that never waits for the filesystem: the mount id and
/// device come from the VFS, the attributes from the cache.
fn mount_id(path: &CString) -> std::io::Result<MountId> {
    // SAFETY: statx is plain data; all-zero is a valid value.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is writable for the call.
    let rc = unsafe { statx_now(path, &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(MountId {
        mnt_id: st.stx_mnt_id,
        unique: st.stx_mask & libc::STATX_MNT_ID_UNIQUE != 0,
        dev: (st.stx_dev_major, st.stx_dev_minor),
    })
}

/// The statx call both sides make. Async-signal-safe.
///
/// # Safety
/// `path` must be NUL-terminated and `st` writable.
unsafe fn statx_now(path: &CString, st: &mut libc::statx) -> libc::c_int {
    libc::statx(
        libc::AT_FDCWD,
        path.as_ptr(),
        libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_DONT_SYNC,
        libc::STATX_MNT_ID_UNIQUE,
        st,
    )
}

/// What the reaper reads of `/proc/self/mountinfo` when the daemon died
/// before it could name its mount: allocated before the fork.
const MOUNTINFO_BYTES: usize = 1 << 20;

/// A mount id as it goes through the pipe: `mnt_id`, `unique`, device.
const ID_BYTES: usize = 8 + 1 + 4 + 4;

impl MountId {
    fn to_bytes(self) -> [u8; ID_BYTES] {
        let mut b = [0u8; ID_BYTES];
        b[..8].copy_from_slice(&self.mnt_id.to_le_bytes());
        b[8] = u8::from(self.unique);
        b[9..13].copy_from_slice(&self.dev.0.to_le_bytes());
        b[13..].copy_from_slice(&self.dev.1.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8; ID_BYTES]) -> MountId {
        let word = |r: std::ops::Range<usize>| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&b[r]);
            u32::from_le_bytes(w)
        };
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[..8]);
        MountId {
            mnt_id: u64::from_le_bytes(id),
            unique: b[8] != 0,
            dev: (word(9..13), word(13..17)),
        }
    }
}

impl Reaper {
    /// Fork a reaper for the mount about to be made on `mountpoint` with
    /// the source `fsname`; [`arm`](Self::arm) it once mounted.
    pub(crate) fn before_mount(mountpoint: &Path, fsname: &str) -> std::io::Result<Reaper> {
        use std::os::unix::ffi::OsStrExt;
        let path = CString::new(mountpoint.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // The mount under ours, by the id /proc/self/mountinfo shows.
        let under = old_mount_id(&path)?;
        let mut title = b"portroot-reaper ".to_vec();
        title.extend_from_slice(mountpoint.as_os_str().as_bytes());
        let title = Title {
            area: arg_area(),
            text: title,
        };
        let orphan = Orphan {
            under,
            source: fsname.as_bytes().to_vec(),
            buf: vec![0u8; MOUNTINFO_BYTES],
        };
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: pipe2 just returned these two descriptors, owned by nobody.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the child only runs `watch`, which makes async-signal-safe
        // system calls on memory allocated before the fork, and never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: in the child, see above.
            unsafe { watch(read.as_raw_fd(), &path, orphan, &title) }
        }
        drop(read);
        debug!(pid, mountpoint = %mountpoint.display(), "reaper watching the mount point");
        Ok(Reaper {
            pid,
            pipe: Some(write),
        })
    }

    /// Tell the reaper that `id` is our mount: the one it removes if the
    /// daemon dies without unmounting.
    pub(crate) fn arm(&mut self, id: MountId) -> std::io::Result<()> {
        use std::io::Write;
        let Some(pipe) = &self.pipe else {
            return Ok(());
        };
        let mut file = std::fs::File::from(pipe.try_clone()?);
        file.write_all(&id.to_bytes())?;
        debug!(pid = self.pid, ?id, "reaper armed");
        Ok(())
    }
}

/// What the reaper needs when the daemon died before naming its mount.
struct Orphan {
    /// The old-style id (as in mountinfo) of the mount that was on the path
    /// before ours.
    under: u64,
    /// Our mount's source, as mountinfo shows it.
    source: Vec<u8>,
    /// Room for /proc/self/mountinfo.
    buf: Vec<u8>,
}

/// The old-style mount id of what is at `path` now (the one
/// /proc/self/mountinfo's first field shows). Async-signal-safe.
fn old_mount_id(path: &CString) -> std::io::Result<u64> {
    // SAFETY: statx is plain data; all-zero is a valid value.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is writable for the call.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_DONT_SYNC,
            libc::STATX_MNT_ID,
            &mut st,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.stx_mnt_id)
}

/// Whether mountinfo's line for the mount `id` says a FUSE mount whose source
/// is `source`. Allocation-free, for the reaper.
fn is_our_fuse_mount(mountinfo: &[u8], id: u64, source: &[u8]) -> bool {
    for line in mountinfo.split(|&b| b == b'\n') {
        let mut fields = line.split(|&b| b == b' ');
        let Some(first) = fields.next() else {
            continue;
        };
        if !decimal_is(first, id) {
            continue;
        }
        // After the optional fields, ` - FSTYPE SOURCE SUPEROPTS`.
        let mut rest = fields.skip_while(|f| *f != b"-");
        let (Some(_), Some(fstype), Some(src)) = (rest.next(), rest.next(), rest.next()) else {
            return false;
        };
        return (fstype == b"fuse" || fstype.starts_with(b"fuse.")) && src == source;
    }
    false
}

/// Whether the ASCII decimal `digits` is `n`.
fn decimal_is(digits: &[u8], n: u64) -> bool {
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return false;
        }
        v = match v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
        {
            Some(v) => v,
            None => return false,
        };
    }
    !digits.is_empty() && v == n
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // The reaper sees the pipe close, finds the mount gone (we unmounted
        // first) and exits.
        drop(self.pipe.take());
        let mut status = 0;
        // SAFETY: waiting for our own child; `status` is writable.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
    }
}

/// The command line the reaper shows, and where the kernel reads it from.
struct Title {
    /// `arg_start..arg_end` of this process (/proc/self/stat fields 48, 49).
    area: Option<(usize, usize)>,
    text: Vec<u8>,
}

/// Where this process's argv strings live, as the kernel reports them.
fn arg_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may hold spaces, start at field 3.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let field = |n: usize| rest.split(' ').nth(n - 3)?.parse::<usize>().ok();
    let (start, end) = (field(48)?, field(49)?);
    (end > start).then_some((start, end))
}

impl Title {
    /// Overwrite the argv strings with `text`, NUL-terminated and padded with
    /// spaces: a non-NUL last byte makes the kernel read the command line as
    /// one string (the setproctitle convention).
    ///
    /// # Safety
    /// Only in the forked child, whose argv strings nothing else reads.
    unsafe fn set(&self) {
        let Some((start, end)) = self.area else {
            return;
        };
        let p = start as *mut u8;
        let len = end - start;
        let n = self.text.len().min(len - 1);
        std::ptr::copy_nonoverlapping(self.text.as_ptr(), p, n);
        *p.add(n) = 0;
        std::ptr::write_bytes(p.add(n + 1), b' ', len - n - 1);
    }
}

/// The reaper's whole life.
///
/// # Safety
/// Only to be called in a freshly forked child; never returns.
unsafe fn watch(read: RawFd, path: &CString, mut orphan: Orphan, title: &Title) -> ! {
    // Keep nothing of the daemon's open: above all not /dev/fuse, which would
    // keep the connection alive, nor fusermount3's socket.
    if read > 0 {
        libc::syscall(libc::SYS_close_range, 0u32, (read - 1) as u32, 0u32);
    }
    libc::syscall(libc::SYS_close_range, (read + 1) as u32, u32::MAX, 0u32);
    // A Ctrl-C or SIGTERM for the daemon's process group is the daemon's to
    // handle; the reaper ends when the daemon does.
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        libc::signal(sig, libc::SIG_IGN);
    }
    libc::prctl(libc::PR_SET_NAME, c"portroot-reaper".as_ptr());
    title.set();
    // The daemon writes our mount's id once mounted, then nothing until it
    // ends: end-of-file.
    let mut id = [0u8; ID_BYTES];
    let mut got = 0usize;
    let mut scratch = [0u8; 16];
    loop {
        let n = if got < ID_BYTES {
            libc::read(read, id.as_mut_ptr().add(got).cast(), ID_BYTES - got)
        } else {
            libc::read(read, scratch.as_mut_ptr().cast(), scratch.len())
        };
        if n == 0 || (n < 0 && *libc::__errno_location() != libc::EINTR) {
            break;
        }
        if n > 0 && got < ID_BYTES {
            got += n as usize;
        }
    }
    if got == ID_BYTES {
        let id = MountId::from_bytes(&id);
        let mut st: libc::statx = std::mem::zeroed();
        if statx_now(path, &mut st) == 0
            && st.stx_mnt_id == id.mnt_id
            && (st.stx_mask & libc::STATX_MNT_ID_UNIQUE != 0) == id.unique
            && (st.stx_dev_major, st.stx_dev_minor) == id.dev
        {
            libc::umount2(path.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW);
        }
    } else if let Ok(now) = old_mount_id(path) {
        // The daemon died while mounting: ours, if anything, is on top.
        if now != orphan.under
            && read_mountinfo(&mut orphan.buf)
                .is_some_and(|n| is_our_fuse_mount(&orphan.buf[..n], now, &orphan.source))
        {
            libc::umount2(path.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW);
        }
    }
    libc::_exit(0)
}

/// Read /proc/self/mountinfo into `buf`; how many bytes, or `None` if it
/// does not fit or cannot be read. Async-signal-safe.
unsafe fn read_mountinfo(buf: &mut [u8]) -> Option<usize> {
    let fd = libc::open(
        c"/proc/self/mountinfo".as_ptr(),
        libc::O_RDONLY | libc::O_CLOEXEC,
    );
    if fd < 0 {
        return None;
    }
    let mut len = 0usize;
    let result = loop {
        if len == buf.len() {
            break None;
        }
        let n = libc::read(fd, buf.as_mut_ptr().add(len).cast(), buf.len() - len);
        if n == 0 {
            break Some(len);
        }
        if n < 0 {
            if *libc::__errno_location() == libc::EINTR {
                continue;
            }
            break None;
        }
        len += n as usize;
    };
    libc::close(fd);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_ids_cross_the_pipe_unchanged() {
        let id = MountId {
            mnt_id: 0x8000_0000_1234,
            unique: true,
            dev: (0, 44),
        };
        assert_eq!(MountId::from_bytes(&id.to_bytes()), id);
    }

    #[test]
    fn only_our_fuse_mount_is_recognised_in_mountinfo() {
        let info = b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
            49 27 0:44 / /tmp/mp ro,nosuid - fuse portroot:g@t1 ro,user_id=0\n\
            50 27 0:45 / /tmp/other ro master:3 - fuse.sshfs host:/x rw\n";
        assert!(is_our_fuse_mount(info, 49, b"portroot:g@t1"));
        assert!(!is_our_fuse_mount(info, 49, b"portroot:g@t2"));
        assert!(!is_our_fuse_mount(info, 22, b"/dev/sda1"));
        assert!(!is_our_fuse_mount(info, 50, b"portroot:g@t1"));
        assert!(!is_our_fuse_mount(info, 4, b"portroot:g@t1"));
        assert!(decimal_is(b"49", 49) && !decimal_is(b"4x", 4) && !decimal_is(b"", 0));
    }
}
