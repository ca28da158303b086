//! portroot-fs: a read-only FUSE filesystem that serves git trees straight from
//! the object database.
//!
//! A tag of the snapshot repository (or any ref of any repository, such as a
//! versioned overlay) becomes a directory tree without a clone or a checkout. The
//! runner binds it into every build chroot; people browse history through the
//! all-tags view. It never depends on the runner crate or on clap.
//!
//! Flow: [`mount`] resolves the ref ([`store::GitStore`]), builds the
//! [`filesystem::GitFs`] (inode table over an [`cache::ObjectCache`]) and hands it
//! to its transports, fuser ([`fuser_adapter`]) and, when the kernel offers
//! it, io_uring ([`ring`]); both carry [`GitFs`]'s [`answers`] and nothing
//! else. The returned [`MountedFs`] unmounts on drop.
#![warn(missing_docs)]

pub mod answers;
pub mod attr;
pub mod cache;
pub mod error;
pub mod filesystem;
pub mod fuser_adapter;
pub mod inode;
pub mod prefetch;
mod readahead;
pub mod reaper;
pub mod ring;
pub mod store;
pub mod tags;
pub mod wire;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, INodeNo, MountOption, SessionACL};
use tracing::{debug, info, warn};

pub use error::{FsError, Result};
pub use filesystem::{GitFs, View};
pub use store::GitStore;

/// Whether requests come through FUSE over io_uring (see [`ring`]).
///
/// `Auto` by default: the kernel decides (`fuse.enable_uring`). A daemon
/// killed while serving through io_uring leaves no dead mount: the
/// [`reaper`] removes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoUring {
    /// When the kernel offers it (`fuse.enable_uring=1`, Linux 6.14+);
    /// otherwise through `/dev/fuse`.
    #[default]
    Auto,
    /// Always; the mount fails if the kernel does not offer it.
    On,
    /// Never: every request through `/dev/fuse`.
    Off,
}

impl IoUring {
    /// Every choice, in the order `--help` lists them.
    pub const ALL: [IoUring; 3] = [IoUring::Auto, IoUring::On, IoUring::Off];

    /// Its name in flags and the config.
    pub fn name(self) -> &'static str {
        match self {
            IoUring::Auto => "auto",
            IoUring::On => "on",
            IoUring::Off => "off",
        }
    }

    /// What it means, for `--help`.
    pub fn about(self) -> &'static str {
        match self {
            IoUring::Auto => "when the kernel allows it",
            IoUring::On => "always; fail if the kernel does not allow it",
            IoUring::Off => "never",
        }
    }
}

impl std::str::FromStr for IoUring {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<IoUring, String> {
        IoUring::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| format!("unknown io_uring choice {s:?}: auto, on or off"))
    }
}

/// How to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// The object cache budget in bytes.
    pub cache_bytes: u64,
    /// FUSE worker threads (at least 1).
    pub threads: usize,
    /// Let every user read the mount (`allow_other`); needed for uid 250.
    pub allow_other: bool,
    /// Have a [`reaper`] remove the mount if the daemon dies, however it
    /// dies (both transports; no fusermount3 needed).
    pub auto_unmount: bool,
    /// The source shown in /proc/mounts; empty means `portroot:<repo>@<ref>`.
    pub fsname: String,
    /// FUSE over io_uring.
    pub io_uring: IoUring,
}

/// The default cache budget: 256 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

/// The default number of FUSE worker threads.
pub const DEFAULT_THREADS: u16 = 2;

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            cache_bytes: DEFAULT_CACHE_BYTES,
            threads: usize::from(DEFAULT_THREADS),
            allow_other: true,
            auto_unmount: true,
            fsname: String::new(),
            io_uring: IoUring::Auto,
        }
    }
}

/// A live mount. Dropping it unmounts and joins the FUSE thread.
#[derive(Debug)]
pub struct MountedFs {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    tree_id: Option<git2::Oid>,
    watcher: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    /// The io_uring queue threads, when requests come through them.
    rings: Option<ring::Rings>,
    ring_requests: Arc<AtomicU64>,
    /// Removes the mount if this process dies without unmounting.
    reaper: Option<reaper::Reaper>,
    /// Our mount, as the kernel told it right after mounting: unmounting by
    /// path is only done while the path still shows this one.
    id: reaper::MountId,
}

impl MountedFs {
    /// Where it is mounted (canonical).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The served tree in the single-ref view.
    pub fn tree_id(&self) -> Option<git2::Oid> {
        self.tree_id
    }

    /// How requests reach the daemon: `io_uring (N queues)` or `/dev/fuse`.
    pub fn transport(&self) -> String {
        match &self.rings {
            Some(r) => format!("io_uring ({} queues)", r.queues()),
            None => "/dev/fuse".to_owned(),
        }
    }

    /// Requests answered through io_uring so far.
    pub fn ring_requests(&self) -> u64 {
        self.ring_requests.load(Ordering::Relaxed)
    }

    /// Whether the FUSE session has ended (someone unmounted it from outside).
    pub fn is_finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }

    /// Unmount and wait for the FUSE thread to finish.
    pub fn unmount(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if let Some((stop, handle)) = self.watcher.take() {
            drop(stop);
            let _ = handle.join();
        }
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let started = Instant::now();
        // Unmount ourselves rather than leave it to fuser's drop, so a busy
        // mount is detached lazily and the join waits for its last user. By
        // path, but only while the path still shows our mount: once it was
        // removed from outside (`umount`, `umount -l`, `fusermount3 -u`), a
        // new mount may already sit there, and it is not ours to take.
        let finished = session.guard.is_finished();
        let ours = !finished && reaper::MountId::at(&self.mountpoint).ok() == Some(self.id);
        let unmounted = ours && unmount_path(&self.mountpoint);
        // Detached from outside but still connected (a user keeps it open):
        // end the connection itself, never what the path shows now.
        let aborted = !finished && !ours && abort_connection(self.id);
        if finished || unmounted || aborted {
            // The connection is gone or going: wait for the session loop to
            // end (a lazily detached mount ends with its last user). fuser's
            // own unmount goes by path and, as it cannot always tell that
            // the connection is gone (through io_uring above all), it took
            // the next mount made on the same path: its handle is left
            // undropped, keeping it from unmounting anything.
            // It ends within a fraction of a millisecond of the unmount:
            // poll from 50 µs up, so the wait is not rounded up to a tick.
            let mut pause = Duration::from_micros(50);
            while !session.guard.is_finished() {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(5));
            }
            std::mem::forget(session);
        } else if ours {
            // Our umount2 failed: fuser may still manage (fusermount3 -u).
            session.umount_and_join().map_err(|source| FsError::Io {
                what: "unmounting",
                path: self.mountpoint.clone(),
                source,
            })?;
        } else {
            // Removed from outside while in use, and no fusectl to end the
            // connection: it ends with this process. Leave the path alone.
            warn!(mountpoint = %self.mountpoint.display(), "detached from outside and still in use: the connection ends when this process exits");
            std::mem::forget(session);
            if let Some(rings) = self.rings.take() {
                std::mem::forget(rings);
            }
        }
        // The connection is gone, so every queue thread has had its entries
        // cancelled and is ending.
        if let Some(rings) = self.rings.take() {
            rings.join();
            debug!(requests = self.ring_requests(), "io_uring queues done");
        }
        drop(self.reaper.take());
        info!(mountpoint = %self.mountpoint.display(), elapsed_ms = started.elapsed().as_millis() as u64, "unmounted");
        Ok(())
    }
}

impl Drop for MountedFs {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            warn!(error = %e, "unmount on drop failed");
        }
    }
}

/// End FUSE connection `id` through the fusectl filesystem, if mounted:
/// the kernel then fails every pending and later request of that mount, and
/// the session loop ends. Nothing happens by path. Says whether it did.
fn abort_connection(id: reaper::MountId) -> bool {
    let abort = format!("/sys/fs/fuse/connections/{}/abort", id.connection());
    match std::fs::write(&abort, "1") {
        Ok(()) => true,
        Err(e) => {
            debug!(error = %e, %abort, "could not abort the connection");
            false
        }
    }
}

/// umount2(2) `path`, lazily if it is busy, and say whether it was unmounted;
/// errors (not mounted, no permission) are left for fuser's own unmount to
/// handle.
fn unmount_path(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::UMOUNT_NOFOLLOW) };
    if rc == 0 {
        return true;
    }
    if std::io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY) {
        warn!(mountpoint = %path.display(), "mount busy, detaching lazily");
        // SAFETY: as above.
        return unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) } == 0;
    }
    false
}

/// The repository's name for the fsname: `repos/gentoo.git` → `gentoo`,
/// `overlay/.git` → `overlay`.
fn repo_name(git_dir: &Path) -> String {
    let git_dir = git_dir
        .canonicalize()
        .unwrap_or_else(|_| git_dir.to_owned());
    let name = match git_dir.file_name() {
        Some(n) if n == ".git" => git_dir.parent().and_then(Path::file_name),
        n => n,
    };
    name.map(|n| n.to_string_lossy().trim_end_matches(".git").to_owned())
        .unwrap_or_default()
}

/// Check that `mountpoint` is an existing, empty directory with nothing mounted
/// on it, and return its canonical path.
pub fn check_mountpoint(mountpoint: &Path) -> Result<PathBuf> {
    let bad = |why| FsError::BadMountpoint {
        path: mountpoint.to_owned(),
        why,
    };
    let meta = std::fs::metadata(mountpoint).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => bad("does not exist"),
        _ => FsError::Io {
            what: "checking mount point",
            path: mountpoint.to_owned(),
            source: e,
        },
    })?;
    if !meta.is_dir() {
        return Err(bad("not a directory"));
    }
    let canonical = mountpoint.canonicalize().map_err(|source| FsError::Io {
        what: "resolving mount point",
        path: mountpoint.to_owned(),
        source,
    })?;
    if is_mountpoint(&canonical) {
        return Err(bad("already mounted"));
    }
    let mut entries = std::fs::read_dir(&canonical).map_err(|source| FsError::Io {
        what: "listing mount point",
        path: mountpoint.to_owned(),
        source,
    })?;
    if entries.next().is_some() {
        return Err(bad("not empty"));
    }
    Ok(canonical)
}

/// Whether `path` (canonical) is a mount point in this mount namespace.
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = escape_mountinfo(path);
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m == want)
}

/// /proc/self/mountinfo escapes space, tab, newline and backslash as octal.
fn escape_mountinfo(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Mount `view` of the repository at `git_dir` on `mountpoint`. The ref is
/// resolved and the mount point checked first; returns once the kernel has
/// completed the FUSE handshake, so the tree is readable.
pub fn mount(
    git_dir: &Path,
    view: View,
    mountpoint: &Path,
    opts: &MountOptions,
) -> Result<MountedFs> {
    let started = Instant::now();
    let store = GitStore::open(git_dir)?;
    let fs = GitFs::new(store, &view, opts.cache_bytes)?;
    let mountpoint = check_mountpoint(mountpoint)?;
    let fsname = fsname(git_dir, &view, opts);
    let tree_id = fs.resolved().map(|r| r.tree);
    let tags = fs.tag_source();
    let pages = fs.page_pusher();
    let mut rings = prepare_rings(opts.io_uring)?;
    let agreed = Arc::new(AtomicBool::new(false));
    let fs = Arc::new(fs);
    let served = fuser_adapter::Served::new(fs.clone(), rings.as_ref().map(|_| agreed.clone()));
    // Forked before the mount, so that no moment is left uncovered.
    let mut reaper = start_reaper(&mountpoint, &fsname, opts.auto_unmount)?;
    // The FUSE handshake (INIT) is over when this returns.
    let session = fuser::Session::new(served, &mountpoint, &session_config(&fsname, opts))
        .map_err(|e| io_error("mounting fuse on", &mountpoint, e))?;
    // On an error from here on, dropping the session unmounts.
    let id = arm_reaper(&mountpoint, reaper.as_mut())?;
    hand_page_pusher(&session, &pages);
    let ring_requests = start_rings(&session, &mut rings, &agreed, &fs, opts.io_uring)?;
    let session = session
        .spawn()
        .map_err(|e| io_error("starting the fuse session on", &mountpoint, e))?;
    let watcher = match tags
        .map(|t| spawn_tag_watcher(t, session.notifier()))
        .transpose()
    {
        Ok(watcher) => watcher,
        Err(source) => {
            // Dropping the session unmounts what we just mounted.
            let _ = session.umount_and_join();
            return Err(io_error(
                "starting the tag watcher for",
                &mountpoint,
                source,
            ));
        }
    };
    info!(
        mountpoint = %mountpoint.display(),
        %fsname,
        tree = ?tree_id,
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "mounted"
    );
    Ok(MountedFs {
        session: Some(session),
        mountpoint,
        tree_id,
        watcher,
        rings,
        ring_requests,
        reaper,
        id,
    })
}

fn io_error(what: &'static str, path: &Path, source: std::io::Error) -> FsError {
    FsError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The source shown in /proc/mounts: `opts.fsname`, else
/// `portroot:<repo>@<ref>` (`portroot:<repo>` for all tags).
fn fsname(git_dir: &Path, view: &View, opts: &MountOptions) -> String {
    if !opts.fsname.is_empty() {
        return opts.fsname.clone();
    }
    let repo = repo_name(git_dir);
    match view {
        View::Ref(r) => format!("portroot:{repo}@{r}"),
        View::AllTags => format!("portroot:{repo}"),
    }
}

/// The FUSE session's mount options, access and threads.
fn session_config(fsname: &str, opts: &MountOptions) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(fsname.to_owned()),
        MountOption::Subtype("portroot".into()),
        MountOption::RO,
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
    ];
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    config
}

/// Give the prefetcher its descriptor of the session's connection, through
/// which it pushes what it inflated into the kernel's page cache, so those
/// reads never reach the daemon.
fn hand_page_pusher<FS: fuser::Filesystem>(
    session: &fuser::Session<FS>,
    pages: &OnceLock<prefetch::PagePusher>,
) {
    use std::os::fd::AsFd;
    match session.as_fd().try_clone_to_owned() {
        Ok(dev) => {
            let _ = pages.set(prefetch::PagePusher::new(dev));
        }
        Err(e) => {
            warn!(error = %e, "no descriptor for page stores: every read reaches the daemon")
        }
    }
}

/// Have the io_uring queues in `rings`, if any, register on the session and
/// serve `fs`, if the kernel `agreed` at INIT. Returns the counter of
/// requests they answer. With `IoUring::Auto`, a refusal leaves the mount
/// served through /dev/fuse (and `rings` empty); with `On`, it fails.
fn start_rings<FS: fuser::Filesystem>(
    session: &fuser::Session<FS>,
    rings: &mut Option<ring::Rings>,
    agreed: &AtomicBool,
    fs: &Arc<GitFs>,
    mode: IoUring,
) -> Result<Arc<AtomicU64>> {
    let Some(r) = rings.as_mut() else {
        return Ok(Arc::new(AtomicU64::new(0)));
    };
    let result = if agreed.load(Ordering::SeqCst) {
        // Registration must happen before anything else uses the mount:
        // the kernel holds every request until all queues are registered.
        use std::os::fd::AsFd;
        session
            .as_fd()
            .try_clone_to_owned()
            .and_then(|dev| r.serve(&dev, fs))
            .map_err(|e| FsError::IoUring(e.to_string()))
    } else {
        Err(FsError::IoUring("the kernel declined it at INIT".into()))
    };
    match result {
        Ok(()) => {
            debug!(queues = r.queues(), "requests come through io_uring");
            Ok(r.served())
        }
        // A refused registration makes the kernel serve the mount
        // through /dev/fuse; the mount itself is fine.
        Err(e) if mode == IoUring::Auto => {
            debug!(error = %e, "serving through /dev/fuse");
            *rings = None;
            Ok(Arc::new(AtomicU64::new(0)))
        }
        Err(e) => Err(e),
    }
}

/// A reaper of our own removes the mount if we die, through either transport
/// (see `reaper` for why not fusermount3's auto-unmount): forked before the
/// mount is made, if `auto_unmount`.
fn start_reaper(
    mountpoint: &Path,
    fsname: &str,
    auto_unmount: bool,
) -> Result<Option<reaper::Reaper>> {
    if !auto_unmount {
        return Ok(None);
    }
    reaper::Reaper::before_mount(mountpoint, fsname)
        .map(Some)
        .map_err(|e| io_error("starting the reaper for", mountpoint, e))
}

/// The mount now at `mountpoint` (ours, just made), told to the reaper.
fn arm_reaper(mountpoint: &Path, reaper: Option<&mut reaper::Reaper>) -> Result<reaper::MountId> {
    let id = reaper::MountId::at(mountpoint)
        .map_err(|e| io_error("reading the mount id of", mountpoint, e))?;
    if let Some(r) = reaper {
        r.arm(id)
            .map_err(|e| io_error("arming the reaper for", mountpoint, e))?;
    }
    Ok(id)
}

/// The io_uring queue threads for `mode`, or `None` to serve through
/// `/dev/fuse`.
fn prepare_rings(mode: IoUring) -> Result<Option<ring::Rings>> {
    if mode == IoUring::Off {
        return Ok(None);
    }
    if !ring::kernel_allows() {
        if mode == IoUring::On {
            return Err(FsError::IoUring(format!(
                "the kernel does not allow it ({} is not Y; Linux 6.14+ with \
                 `echo 1 > {}` turns it on)",
                ring::ENABLE_PARAM,
                ring::ENABLE_PARAM
            )));
        }
        return Ok(None);
    }
    match ring::Rings::prepare() {
        Ok(r) => Ok(Some(r)),
        Err(e) if mode == IoUring::Auto => {
            debug!(error = %e, "no io_uring queues, serving through /dev/fuse");
            Ok(None)
        }
        Err(e) => Err(FsError::IoUring(e.to_string())),
    }
}

/// Poll the refs every half second; when the tag list changes, tell the kernel
/// to drop its cached root listing so `ls MNT` shows the new tags.
fn spawn_tag_watcher(
    tags: Arc<tags::TagSource>,
    notifier: fuser::Notifier,
) -> std::io::Result<(mpsc::Sender<()>, JoinHandle<()>)> {
    let (stop, stopped) = mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("portroot-tags".into())
        .spawn(move || {
            let mut seen = tags.generation();
            while let Err(mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(Duration::from_millis(500))
            {
                if let Err(e) = tags.current() {
                    warn!(error = %e, "re-reading tags failed");
                    continue;
                }
                let now = tags.generation();
                if now != seen {
                    seen = now;
                    debug!("tags changed, invalidating the root listing");
                    if let Err(e) = notifier.inval_inode(INodeNo::ROOT, 0, 0) {
                        debug!(error = %e, "root invalidation not delivered");
                    }
                }
            }
        })?;
    Ok((stop, handle))
}
