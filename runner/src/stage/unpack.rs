//! Unpacking one tar stream into a directory without ever leaving it.
//!
//! The `tar` crate parses (headers, GNU long names, PAX records, sparse maps);
//! everything that touches the filesystem happens here, relative to an open
//! directory descriptor of the root:
//!
//! * names are split into components; an absolute name or a `..` component is
//!   refused (only `./` and empty components are dropped);
//! * parents are opened with `openat2(RESOLVE_BENEATH)`, so a path through a
//!   symlink that leaves the root (`a -> /etc`, then `a/passwd`) fails with
//!   `EXDEV` instead of writing to the host; symlinks that stay inside are
//!   followed as tar would;
//! * the last component is created with `O_CREAT|O_EXCL|O_NOFOLLOW`, `mkdirat`,
//!   `symlinkat`, `mknodat` or `linkat`, none of which follow a symlink there;
//! * a hardlink must point at a non-directory entry unpacked earlier from the
//!   same archive;
//! * metadata goes on in the order the kernel needs: owner first (chown clears
//!   setuid/setgid and `security.capability`), then mode, then xattrs, then mtime;
//!   directory mtimes last, once nothing more is created inside them;
//! * a regular file whose data ends early, or an archive without its
//!   end-of-archive blocks, is an error rather than a short file.

mod header;

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use tracing::{debug, warn};
use xattr::FileExt;

use self::header::{components, join, meta, printable, shown_name, Kind, Meta};
use crate::error::{io, sys, Error, Result};

/// What an unpack produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Unpacked {
    /// Entries created: directories, files, links, nodes (the root excluded).
    pub files: u64,
    /// Bytes of regular file data written.
    pub bytes: u64,
}

/// Unpack the tar `stream` (already decompressed) read from `tarball` into the
/// existing, empty directory `root`. `tick` is called after every entry and
/// every chunk of file data, for progress. On error, `root` holds a partial tree
/// the caller removes.
pub(crate) fn unpack(
    stream: Box<dyn Read>,
    tarball: &Path,
    root: &Path,
    tick: &mut dyn FnMut(),
) -> Result<Unpacked> {
    let archive_err = |source: io::Error| Error::Archive {
        path: tarball.to_owned(),
        source: printable(source),
    };
    let consumed = Rc::new(Cell::new(0u64));
    let counting = Counting {
        inner: BufReader::with_capacity(256 * 1024, stream),
        count: Rc::clone(&consumed),
    };
    let mut u = Unpacker::new(root, tarball)?;
    let mut archive = tar::Archive::new(counting);
    let mut data_end = 0u64;
    let mut entries_seen = 0u64;
    {
        let entries = archive.entries().map_err(archive_err)?;
        for entry in entries {
            if crate::interrupt::requested() {
                return Err(Error::Interrupted);
            }
            let mut entry = entry.map_err(|e| {
                if entries_seen == 0 {
                    // The very first header is bad: this was never a tar.
                    Error::NotTar {
                        path: tarball.to_owned(),
                    }
                } else {
                    archive_err(e)
                }
            })?;
            // From the header, not from what was read: an entry whose data
            // is skipped (a directory with a size) is read past only by the
            // next header's read.
            data_end = entry.raw_file_position() + entry.size().div_ceil(512) * 512;
            u.entry(&mut entry, tarball, tick)?;
            entries_seen += 1;
            tick();
        }
    }
    // The tar reader stops at the first zero block or at end of input; only the
    // former is a complete archive. A zero block was read iff more than the last
    // entry's data, rounded up to a block, was consumed.
    if entries_seen == 0 {
        return Err(Error::Truncated {
            path: tarball.to_owned(),
            detail: "no entries".into(),
        });
    }
    if consumed.get() <= data_end {
        return Err(Error::Truncated {
            path: tarball.to_owned(),
            detail: "no end-of-archive blocks".into(),
        });
    }
    // Read the rest of the stream so the decompressor checks its end (a stream
    // cut inside the trailing zero records is still a truncated file).
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(archive_err)?;
    u.finish()?;
    Ok(u.stats)
}

/// For the fuzz targets and their regression replay only: decompress `data`
/// as [`crate::archive::decompress`] does for a stage tarball and unpack it
/// into the existing, empty directory `root`, through the same [`unpack`]
/// `stage add` uses. `(entries created, bytes written)` on success.
#[doc(hidden)]
pub fn unpack_bytes(data: &[u8], root: &Path) -> Result<(u64, u64)> {
    let tarball = Path::new("fuzz.tar");
    let (stream, _) =
        crate::archive::decompress(io::Cursor::new(data.to_vec())).map_err(|source| {
            Error::Archive {
                path: tarball.to_owned(),
                source,
            }
        })?;
    let stats = unpack(stream, tarball, root, &mut || {})?;
    Ok((stats.files, stats.bytes))
}

/// A reader that counts the bytes handed to the tar parser.
struct Counting<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Where an entry (not the root) goes.
struct Place<'n, 'e> {
    /// Its path's components below the root.
    comps: Vec<&'n [u8]>,
    /// The same, joined.
    rel: Vec<u8>,
    /// The same, as a host path.
    path: PathBuf,
    /// Its name as error messages show it.
    shown: &'e str,
    /// The tarball it comes from.
    tarball: &'e Path,
}

impl Place<'_, '_> {
    /// Its last component.
    fn leaf(&self) -> &OsStr {
        OsStr::from_bytes(self.comps[self.comps.len() - 1])
    }
}

/// The error refusing entry `shown` of `tarball`.
fn refusal(tarball: &Path, shown: &str, reason: String) -> Error {
    Error::Entry {
        tarball: tarball.to_owned(),
        entry: shown.to_owned(),
        reason,
    }
}

/// The unpacking state for one root.
struct Unpacker<'a> {
    root: &'a Path,
    /// The tarball, for messages.
    tarball: &'a Path,
    /// `O_PATH` descriptor of the root; every lookup starts here.
    root_fd: OwnedFd,
    /// The last parent opened (joined path, descriptor): entries come grouped
    /// by directory. Dropped whenever a non-directory is replaced or a symlink
    /// created, since either can change what a path resolves to.
    parent_cache: Option<(Vec<u8>, Rc<OwnedFd>)>,
    /// Directory mtimes, applied at the end (key: joined path, `""` = root).
    dir_times: BTreeMap<Vec<u8>, TimeSpec>,
    /// Non-directory entries unpacked so far: the only valid hardlink targets.
    unpacked: HashSet<Vec<u8>>,
    buf: Vec<u8>,
    stats: Unpacked,
}

impl<'a> Unpacker<'a> {
    fn new(root: &'a Path, tarball: &'a Path) -> Result<Unpacker<'a>> {
        let root_fd = nix::fcntl::open(
            root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys("opening", root))?;
        Ok(Unpacker {
            root,
            tarball,
            root_fd,
            parent_cache: None,
            dir_times: BTreeMap::new(),
            unpacked: HashSet::new(),
            buf: vec![0; 256 * 1024],
            stats: Unpacked::default(),
        })
    }

    /// `rel` below the root as messages and logs show it: the archive's
    /// part through [`shown_name`], so that a name with a line break (or
    /// megabytes long) cannot break the one-line error. For messages only:
    /// every filesystem call goes through the descriptors.
    fn path(&self, rel: &[u8]) -> PathBuf {
        self.root.join(shown_name(rel))
    }

    /// Open `rel` (a directory) below the root, following only symlinks that
    /// stay below it.
    fn open_beneath(&self, rel: &[u8], flags: OFlag) -> nix::Result<OwnedFd> {
        let rel: &[u8] = if rel.is_empty() { b"." } else { rel };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        loop {
            // EAGAIN: a concurrent rename somewhere; openat2(2) asks to retry.
            match openat2(self.root_fd.as_fd(), OsStr::from_bytes(rel), how) {
                Err(Errno::EAGAIN) => continue,
                r => return r,
            }
        }
    }

    /// The refusal for `entry` when resolving a parent failed with `errno`,
    /// or `None` when it is an ordinary system error.
    fn refusal(&self, entry: &str, errno: Errno) -> Option<Error> {
        let reason = match errno {
            Errno::EXDEV => "path goes through a symlink that leaves the root",
            Errno::ELOOP => "path goes through a symlink loop",
            Errno::ENOTDIR => "a parent in its path is not a directory",
            Errno::EEXIST => "a parent in its path is a dangling symlink",
            _ => return None,
        };
        Some(Error::Entry {
            tarball: self.tarball.to_owned(),
            entry: entry.to_owned(),
            reason: reason.into(),
        })
    }

    /// The directory that will hold `comps.last()`, created (0755, root) with
    /// its missing ancestors if needed.
    fn parent(&mut self, comps: &[&[u8]], entry: &str) -> Result<Rc<OwnedFd>> {
        let dirs = &comps[..comps.len() - 1];
        let key = join(dirs);
        if let Some((cached, fd)) = &self.parent_cache {
            if *cached == key {
                return Ok(Rc::clone(fd));
            }
        }
        let fd = match self.open_beneath(&key, OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => self.make_dirs(dirs, entry)?,
            Err(e) => {
                return Err(self
                    .refusal(entry, e)
                    .unwrap_or_else(|| sys("opening", self.path(&key))(e)))
            }
        };
        let fd = Rc::new(fd);
        self.parent_cache = Some((key, Rc::clone(&fd)));
        Ok(fd)
    }

    /// Create the missing directories of `dirs`, one component at a time, each
    /// under a parent opened beneath the root.
    fn make_dirs(&mut self, dirs: &[&[u8]], entry: &str) -> Result<OwnedFd> {
        let mut fd = self
            .open_beneath(b"", OFlag::O_PATH | OFlag::O_DIRECTORY)
            .map_err(sys("opening", self.root))?;
        for i in 0..dirs.len() {
            let prefix = join(&dirs[..=i]);
            let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
            fd = match self.open_beneath(&prefix, flags) {
                Ok(next) => next,
                Err(Errno::ENOENT) => {
                    let name = OsStr::from_bytes(dirs[i]);
                    mkdirat(&fd, name, Mode::from_bits_truncate(0o755)).map_err(|e| {
                        self.refusal(entry, e)
                            .unwrap_or_else(|| sys("creating directory", self.path(&prefix))(e))
                    })?;
                    // mkdir's mode is filtered by the umask; say exactly 0755.
                    fchmodat(
                        &fd,
                        name,
                        Mode::from_bits_truncate(0o755),
                        FchmodatFlags::FollowSymlink,
                    )
                    .map_err(sys("changing mode of", self.path(&prefix)))?;
                    debug!(dir = %self.path(&prefix).display(), "created implicit parent");
                    self.stats.files += 1;
                    self.open_beneath(&prefix, flags)
                        .map_err(sys("opening", self.path(&prefix)))?
                }
                Err(e) => {
                    return Err(self
                        .refusal(entry, e)
                        .unwrap_or_else(|| sys("opening", self.path(&prefix))(e)))
                }
            };
        }
        Ok(fd)
    }

    /// Create the entry at `comps` with `make` (which must fail with `EEXIST`
    /// rather than follow or overwrite anything there). If something is in
    /// the way: a non-directory is replaced (as tar does), a directory is kept
    /// for a directory entry (`None`: nothing made) and refused otherwise.
    /// Trying first saves a `stat` per entry in the common case.
    fn create<T>(
        &mut self,
        comps: &[&[u8]],
        entry: &str,
        dir: bool,
        what: &'static str,
        make: impl Fn(&OwnedFd, &OsStr) -> nix::Result<T>,
    ) -> Result<(Rc<OwnedFd>, Option<T>)> {
        let parent = self.parent(comps, entry)?;
        let leaf = OsStr::from_bytes(comps[comps.len() - 1]);
        match make(&parent, leaf) {
            Ok(t) => return Ok((parent, Some(t))),
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(sys(what, self.path(&join(comps)))(e)),
        }
        let rel = join(comps);
        match fstatat(&*parent, leaf, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
                if dir {
                    Ok((parent, None))
                } else {
                    Err(Error::Entry {
                        tarball: self.tarball.to_owned(),
                        entry: entry.to_owned(),
                        reason: "would replace a directory".into(),
                    })
                }
            }
            Ok(_) => {
                debug!(entry, "replacing an earlier entry");
                unlinkat(&*parent, leaf, UnlinkatFlags::NoRemoveDir)
                    .map_err(sys("removing", self.path(&rel)))?;
                self.unpacked.remove(&rel);
                self.parent_cache = None;
                let made = make(&parent, leaf).map_err(sys(what, self.path(&rel)))?;
                Ok((parent, Some(made)))
            }
            Err(e) => Err(sys("inspecting", self.path(&rel))(e)),
        }
    }

    fn entry(
        &mut self,
        entry: &mut tar::Entry<'_, impl Read>,
        tarball: &Path,
        tick: &mut dyn FnMut(),
    ) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let shown = shown_name(&raw);
        let refuse = |reason: String| refusal(tarball, &shown, reason);
        let ty = entry.header().entry_type();
        let kind = Kind::of(ty)
            .ok_or_else(|| refuse(format!("unsupported entry type {:?}", ty.as_byte() as char)))?;
        if kind == Kind::Skip {
            return Ok(());
        }
        let comps = components(&raw).map_err(|r| refuse(r.into()))?;
        let meta = meta(entry).map_err(|e| refuse(format!("bad header: {}", printable(e))))?;
        if comps.is_empty() {
            return match kind {
                Kind::Dir => self.root_dir(&meta),
                _ => Err(refuse("only a directory can be the root".into())),
            };
        }
        let rel = join(&comps);
        let at = Place {
            path: self.path(&rel),
            rel,
            comps,
            shown: &shown,
            tarball,
        };
        match kind {
            Kind::Dir => self.dir_entry(at, &meta),
            Kind::File => self.file_entry(at, entry, &meta, tick),
            Kind::Hardlink => self.hardlink_entry(at, entry),
            Kind::Symlink => self.symlink_entry(at, entry, &meta),
            Kind::Char | Kind::Block | Kind::Fifo => self.node_entry(at, entry, kind, &meta),
            Kind::Skip => Ok(()),
        }
    }

    fn dir_entry(&mut self, at: Place<'_, '_>, meta: &Meta) -> Result<()> {
        let (parent, made) =
            self.create(&at.comps, at.shown, true, "creating directory", |p, l| {
                mkdirat(p, l, Mode::from_bits_truncate(0o700))
            })?;
        if made.is_some() {
            self.stats.files += 1;
        }
        let fd = openat(
            &*parent,
            at.leaf(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys("opening", &at.path))?;
        apply_fd(&File::from(fd), meta, &at.path, false)?;
        self.dir_times.insert(at.rel, meta.mtime);
        Ok(())
    }

    fn file_entry(
        &mut self,
        at: Place<'_, '_>,
        entry: &mut tar::Entry<'_, impl Read>,
        meta: &Meta,
        tick: &mut dyn FnMut(),
    ) -> Result<()> {
        let (_, fd) = self.create(&at.comps, at.shown, false, "creating", |p, l| {
            openat(
                p,
                l,
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
        })?;
        let fd = fd.expect("invariant: create makes every non-directory");
        let mut file = File::from(fd);
        let expected = entry.size();
        let mut written = 0u64;
        loop {
            let n = entry.read(&mut self.buf).map_err(|e| Error::Archive {
                path: at.tarball.to_owned(),
                source: printable(e),
            })?;
            if n == 0 {
                break;
            }
            file.write_all(&self.buf[..n])
                .map_err(io("writing", &at.path))?;
            written += n as u64;
            tick();
        }
        if written != expected {
            return Err(Error::Truncated {
                path: at.tarball.to_owned(),
                detail: format!("entry {} has {written} of {expected} bytes", at.shown),
            });
        }
        apply_fd(&file, meta, &at.path, true)?;
        self.stats.files += 1;
        self.stats.bytes += written;
        self.unpacked.insert(at.rel);
        Ok(())
    }

    fn hardlink_entry(
        &mut self,
        at: Place<'_, '_>,
        entry: &mut tar::Entry<'_, impl Read>,
    ) -> Result<()> {
        let refuse = |reason: String| refusal(at.tarball, at.shown, reason);
        let target_raw = entry
            .link_name_bytes()
            .ok_or_else(|| refuse("hardlink without a target".into()))?
            .into_owned();
        let target_shown = shown_name(&target_raw);
        let target = components(&target_raw)
            .map_err(|r| refuse(format!("hardlink target {target_shown}: {r}")))?;
        let target_rel = join(&target);
        if target.is_empty() || !self.unpacked.contains(&target_rel) {
            return Err(refuse(format!(
                "hardlink target {target_shown} is not an earlier file of the archive"
            )));
        }
        let target_parent = self.parent(&target, &target_shown)?;
        let target_leaf = OsStr::from_bytes(target[target.len() - 1]);
        self.create(&at.comps, at.shown, false, "creating hardlink", |p, l| {
            linkat(&*target_parent, target_leaf, p, l, AtFlags::empty())
        })?;
        self.stats.files += 1;
        self.unpacked.insert(at.rel);
        Ok(())
    }

    fn symlink_entry(
        &mut self,
        at: Place<'_, '_>,
        entry: &mut tar::Entry<'_, impl Read>,
        meta: &Meta,
    ) -> Result<()> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| refusal(at.tarball, at.shown, "symlink without a target".into()))?
            .into_owned();
        let (parent, _) = self.create(&at.comps, at.shown, false, "creating symlink", |p, l| {
            symlinkat(OsStr::from_bytes(&target), p, l)
        })?;
        self.parent_cache = None;
        self.apply_at(&parent, at.leaf(), meta, &at.path, false)?;
        self.stats.files += 1;
        self.unpacked.insert(at.rel);
        Ok(())
    }

    fn node_entry(
        &mut self,
        at: Place<'_, '_>,
        entry: &mut tar::Entry<'_, impl Read>,
        kind: Kind,
        meta: &Meta,
    ) -> Result<()> {
        let (sflag, dev) = match kind {
            Kind::Fifo => (SFlag::S_IFIFO, 0),
            _ => {
                let h = entry.header();
                let major = h.device_major().ok().flatten();
                let minor = h.device_minor().ok().flatten();
                let (Some(major), Some(minor)) = (major, minor) else {
                    return Err(refusal(
                        at.tarball,
                        at.shown,
                        "device node without a valid number".into(),
                    ));
                };
                let sflag = if kind == Kind::Char {
                    SFlag::S_IFCHR
                } else {
                    SFlag::S_IFBLK
                };
                (sflag, libc::makedev(major, minor))
            }
        };
        let (parent, _) = self.create(&at.comps, at.shown, false, "creating node", |p, l| {
            mknodat(p, l, sflag, Mode::from_bits_truncate(0o600), dev)
        })?;
        self.apply_at(&parent, at.leaf(), meta, &at.path, true)?;
        self.stats.files += 1;
        self.unpacked.insert(at.rel);
        Ok(())
    }

    /// The archive's entry for the root itself (`./`): its owner, mode and
    /// xattrs go on the root directory.
    fn root_dir(&mut self, meta: &Meta) -> Result<()> {
        let fd = self
            .open_beneath(b"", OFlag::O_RDONLY | OFlag::O_DIRECTORY)
            .map_err(sys("opening", self.root))?;
        apply_fd(&File::from(fd), meta, self.root, false)?;
        self.dir_times.insert(Vec::new(), meta.mtime);
        Ok(())
    }

    /// Owner, mode, xattrs and mtime for something that cannot be opened
    /// without side effects (symlink, device, fifo), by name in its parent.
    fn apply_at(
        &self,
        parent: &OwnedFd,
        leaf: &OsStr,
        meta: &Meta,
        path: &Path,
        chmod: bool,
    ) -> Result<()> {
        fchownat(
            parent,
            leaf,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(sys("changing owner of", path))?;
        if chmod {
            // Not a symlink (we just made the node), so following is moot;
            // Linux has no lchmod.
            fchmodat(
                parent,
                leaf,
                Mode::from_bits_truncate(meta.mode),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(sys("changing mode of", path))?;
        }
        if !meta.xattrs.is_empty() {
            // lsetxattr(2) by a path through our parent descriptor: the final
            // component is not followed.
            use std::os::fd::AsRawFd;
            let via = PathBuf::from(format!("/proc/self/fd/{}", parent.as_raw_fd())).join(leaf);
            for (name, value) in &meta.xattrs {
                set_xattr(|| xattr::set(&via, name, value), name, path)?;
            }
        }
        utimensat(
            parent,
            leaf,
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(sys("setting mtime of", path))
    }

    /// Apply the directory mtimes, now that nothing more is created inside.
    fn finish(&mut self) -> Result<()> {
        let times = std::mem::take(&mut self.dir_times);
        for (rel, mtime) in times {
            let path = self.path(&rel);
            let fd = self
                .open_beneath(&rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                .map_err(sys("opening", &path))?;
            futimens(&fd, &mtime, &mtime).map_err(sys("setting mtime of", &path))?;
        }
        Ok(())
    }
}

/// Owner, then mode, then xattrs, then (unless a directory) mtime, on an open
/// file or directory.
fn apply_fd(file: &File, meta: &Meta, path: &Path, mtime: bool) -> Result<()> {
    fchown(
        file,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(sys("changing owner of", path))?;
    fchmod(file, Mode::from_bits_truncate(meta.mode)).map_err(sys("changing mode of", path))?;
    for (name, value) in &meta.xattrs {
        set_xattr(|| file.set_xattr(name, value), name, path)?;
    }
    if mtime {
        futimens(file, &meta.mtime, &meta.mtime).map_err(sys("setting mtime of", path))?;
    }
    Ok(())
}

/// Set one xattr. A filesystem without support for a non-security namespace
/// (`user.*` on some) degrades with a warning; anything else is an error, and
/// `security.*` (file capabilities) always is.
fn set_xattr(set: impl FnOnce() -> io::Result<()>, name: &str, path: &Path) -> Result<()> {
    match set() {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) && !name.starts_with("security.") => {
            warn!(path = %path.display(), xattr = name, "filesystem does not keep this xattr");
            Ok(())
        }
        Err(source) => Err(Error::Io {
            what: "setting xattr on",
            path: path.join(format!("@{}", shown_name(name.as_bytes()))),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unpack the plain tar `tar` into a fresh directory; the error with its
    /// sources, as the binary prints it (`{:#}`).
    fn unpack_error(tar: Vec<u8>) -> String {
        let dir = tempfile::tempdir().unwrap();
        let err = unpack(
            Box::new(io::Cursor::new(tar)),
            Path::new("t.tar"),
            dir.path(),
            &mut || {},
        )
        .expect_err("the archive unpacked");
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }

    /// A tar of one empty file named `name`, its header changed by `edit`.
    fn one_file(name: &[u8], edit: impl FnOnce(&mut tar::Header)) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        edit(&mut h);
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(&mut h, OsStr::from_bytes(name), io::empty())
            .unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn errors_about_hostile_names_stay_on_one_line() {
        // The kernel refuses a component over NAME_MAX: the system error
        // named the path with its line break as it was.
        let mut name = b"d\n".to_vec();
        name.extend(std::iter::repeat_n(b'y', 300));
        let err = unpack_error(one_file(&name, |_| {}));
        assert!(!err.contains(char::is_control), "{err:?}");
        assert!(err.contains("d\\nyyy") && err.len() < 1000, "{err:?}");
        // The tar reader's own message on a bad number quotes the raw name.
        let err = unpack_error(one_file(b"a\nb", |h| {
            h.as_old_mut().uid = *b"zzzzzzz\0";
        }));
        assert!(!err.contains(char::is_control), "{err:?}");
        assert!(err.contains("bad header"), "{err:?}");
    }
}
