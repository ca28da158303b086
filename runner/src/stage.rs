//! The stage store: stage3/stage4 tarballs unpacked once, content-addressed.
//!
//! ```text
//! stages/<sha256 of the tarball>/rootfs/     the unpacked tree, never written again
//! stages/<sha256>/stage.json                 what was unpacked (files, bytes, source, ...)
//! stages/<sha256>/lock                       shared flock while a run uses the stage
//! stages/by-name/<name> -> ../<sha256>       names, replaced atomically by rename
//! stages/by-file/<dev-ino-size-times> -> ../<sha256>
//!                                            digest cache: the same file is not re-hashed
//! ```
//!
//! [`StageStore::add`] hashes the tarball while unpacking it (one read of the
//! file) into a temporary directory under the store's `tmp/`, on the same
//! filesystem, and renames the finished directory into place: a failure at any
//! point (hostile entry, corrupt stream, full disk) removes the temporary
//! directory and leaves `stages/` as it was. Runs take a [`StageLease`] (a shared
//! `flock` on the stage's lock file) for as long as their overlays sit on the
//! rootfs; [`StageStore::remove`] needs the exclusive lock without waiting, so a
//! leased stage cannot be removed under a run.

pub mod export;
mod pipe;
mod unpack;

#[doc(hidden)]
pub use self::unpack::unpack_bytes;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use self::pipe::{Finished, Pipe};
use crate::error::{io, Error, Result};

/// Directory of the name symlinks inside `stages/`.
const BY_NAME: &str = "by-name";
/// Directory of the digest cache symlinks inside `stages/`.
const BY_FILE: &str = "by-file";
/// The shortest digest prefix [`StageStore::resolve`] accepts.
pub const MIN_PREFIX: usize = 4;

/// One unpacked stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// Hex sha256 of the tarball file (64 lowercase hex digits).
    pub digest: String,
    /// The names pointing at this stage, sorted.
    pub names: Vec<String>,
    /// The unpacked tree: `stages/<digest>/rootfs`. Read-only by convention:
    /// runs put an overlay on top and never write here.
    pub rootfs: PathBuf,
    /// Entries unpacked (directories, files, links, nodes).
    pub files: u64,
    /// Bytes of regular file data.
    pub bytes: u64,
    /// When it was added, seconds since the epoch.
    pub added: u64,
    /// The tarball's file name when it was added.
    pub source: String,
    /// The tarball's size in bytes.
    pub tarball_bytes: u64,
}

impl Stage {
    /// The first 12 digits of the digest, as `stage list` shows it.
    pub fn short_digest(&self) -> &str {
        &self.digest[..12]
    }
}

/// A stage held for a run: while this value lives, the stage cannot be removed.
#[derive(Debug)]
pub struct StageLease {
    /// The leased stage.
    pub stage: Stage,
    /// The shared flock on `stages/<digest>/lock`, released on drop.
    _lock: Flock<File>,
}

/// The outcome of [`StageStore::add_tarball`].
#[derive(Debug, Clone)]
pub struct Added {
    /// The stage, new or already present.
    pub stage: Stage,
    /// Whether this call unpacked it (false: it was already in the store).
    pub unpacked: bool,
    /// The name set by this call, if any.
    pub named: Option<String>,
}

/// `stage.json`: what the store knows about a stage besides its names.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    digest: String,
    source: String,
    compression: String,
    tarball_bytes: u64,
    files: u64,
    bytes: u64,
    added: u64,
}

/// The stages of one store.
#[derive(Debug, Clone)]
pub struct StageStore {
    stages: PathBuf,
    tmp: PathBuf,
}

impl StageStore {
    /// The store whose stages live in `stages_dir` (`store.stages_dir()`), with
    /// scratch space in `tmp_dir` (`store.tmp_dir()`, same filesystem). Nothing is
    /// created until something is added.
    pub fn new(stages_dir: PathBuf, tmp_dir: PathBuf) -> StageStore {
        StageStore {
            stages: stages_dir,
            tmp: tmp_dir,
        }
    }

    /// Add the tarball at `tarball` (any compression [`archive`] knows) and name
    /// it `name`, or after the file (`stage4-amd64-2026.tar.xz` →
    /// `stage4-amd64-2026`). `progress` gets the number of tarball bytes read so
    /// far. Adding a tarball already in the store unpacks nothing and only sets
    /// `name` if one is given.
    pub fn add(&self, tarball: &Path, name: Option<&str>, progress: &dyn Fn(u64)) -> Result<Stage> {
        self.add_tarball(tarball, name, progress).map(|a| a.stage)
    }

    /// [`add`](Self::add), telling also whether anything was unpacked.
    pub fn add_tarball(
        &self,
        tarball: &Path,
        name: Option<&str>,
        progress: &dyn Fn(u64),
    ) -> Result<Added> {
        let start = Instant::now();
        if let Some(name) = name {
            check_name(name)?;
        }
        let meta = fs::metadata(tarball).map_err(io("reading", tarball))?;
        if !meta.is_file() {
            return Err(Error::Invalid(format!(
                "{} is not a regular file",
                tarball.display()
            )));
        }
        if meta.len() == 0 {
            return Err(Error::Invalid(format!("{} is empty", tarball.display())));
        }
        let key = file_key(&meta);
        if let Some(digest) = self.cached_digest(&key) {
            if self.stage_dir(&digest).is_dir() {
                debug!(%digest, "tarball known by its file identity, not re-hashed");
                if let Some(name) = name {
                    self.set_name(name, &digest)?;
                }
                return Ok(Added {
                    stage: self.load(&digest)?,
                    unpacked: false,
                    named: name.map(str::to_owned),
                });
            }
        }
        // A copy of a tarball already in the store (same size as one of them):
        // hashing first costs one read at memory speed and can save the whole
        // unpack.
        if self.list()?.iter().any(|s| s.tarball_bytes == meta.len()) {
            let digest = hash_file(tarball, progress)?;
            if self.stage_dir(&digest).is_dir() {
                debug!(%digest, "same content as a stage in the store");
                if let Some(name) = name {
                    self.set_name(name, &digest)?;
                }
                self.cache_digest(&key, &digest);
                return Ok(Added {
                    stage: self.load(&digest)?,
                    unpacked: false,
                    named: name.map(str::to_owned),
                });
            }
        }
        let explicit = name;
        let default_name;
        let name = match name {
            Some(n) => n,
            None => {
                default_name = default_name_for(tarball)?;
                &default_name
            }
        };

        fs::create_dir_all(&self.tmp).map_err(io("creating", &self.tmp))?;
        // `stage-PID-`: a signal handler removes its own (see the store's
        // scratch prefixes); `collect_garbage` goes by the lock below.
        let work = tempfile::Builder::new()
            .prefix(&format!("stage-{}-", std::process::id()))
            .tempdir_in(&self.tmp)
            .map_err(io("creating a directory in", &self.tmp))?;
        // Held until the directory is renamed into place or deleted, so that
        // `collect_garbage` can tell a live unpack from one a crash left.
        let _busy = lock_dir(work.path())?;
        let rootfs = work.path().join("rootfs");
        fs::create_dir(&rootfs).map_err(io("creating", &rootfs))?;

        let file = File::open(tarball).map_err(io("opening", tarball))?;
        let (pipe, stream) = Pipe::start(file).map_err(io("reading", tarball))?;
        let read = pipe.bytes_read();
        let unpacked = unpack::unpack(Box::new(stream), tarball, &rootfs, &mut || {
            progress(read.load(Ordering::Relaxed))
        });
        // The stream is consumed (or dropped on error): the thread ends either way.
        let finished = pipe.finish();
        let stats = unpacked?;
        let Finished {
            compression,
            digest,
        } = finished.map_err(io("reading", tarball))?;
        progress(read.load(Ordering::Relaxed));
        debug!(%compression, %digest, "unpacked");

        let dest = self.stage_dir(&digest);
        let unpacked = if dest.is_dir() {
            debug!(%digest, "same tarball already in the store; dropping this unpack");
            false
        } else {
            let record = Record {
                digest: digest.clone(),
                source: tarball
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                compression: compression.to_string(),
                tarball_bytes: meta.len(),
                files: stats.files,
                bytes: stats.bytes,
                added: now(),
            };
            write_record(&work.path().join("stage.json"), &record)?;
            let lock = work.path().join("lock");
            File::create(&lock).map_err(io("creating", &lock))?;
            fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755))
                .map_err(io("changing mode of", work.path()))?;
            fs::create_dir_all(&self.stages).map_err(io("creating", &self.stages))?;
            match fs::rename(work.path(), &dest) {
                Ok(()) => {
                    // Now owned by the store: the TempDir must not delete it.
                    let _ = work.keep();
                    true
                }
                // Another `stage add` of the same tarball won the race.
                Err(e) if dest.is_dir() => {
                    debug!(%digest, error = %e, "lost the race to add the same tarball");
                    false
                }
                Err(e) => return Err(io("moving the unpacked stage to", &dest)(e)),
            }
        };
        // A tarball already present keeps its names unless one is given.
        let named = if unpacked || explicit.is_some() {
            self.set_name(name, &digest)?;
            Some(name.to_owned())
        } else {
            None
        };
        self.cache_digest(&key, &digest);
        let stage = self.load(&digest)?;
        if unpacked {
            info!(
                digest = %digest,
                files = stage.files,
                bytes = stage.bytes,
                secs = start.elapsed().as_secs_f64(),
                "stage added"
            );
        }
        Ok(Added {
            stage,
            unpacked,
            named,
        })
    }

    /// Every stage, oldest first.
    pub fn list(&self) -> Result<Vec<Stage>> {
        let names = self.names()?;
        let mut stages = Vec::new();
        for digest in self.digests()? {
            let mut stage = self.load_record(&digest)?;
            stage.names = names.get(&digest).cloned().unwrap_or_default();
            stages.push(stage);
        }
        stages.sort_by(|a, b| a.added.cmp(&b.added).then_with(|| a.digest.cmp(&b.digest)));
        Ok(stages)
    }

    /// The stage called `name_or_digest`: a name, a full digest, or a unique
    /// digest prefix of at least [`MIN_PREFIX`] hex digits.
    pub fn resolve(&self, name_or_digest: &str) -> Result<Stage> {
        let unknown = || Error::UnknownStage(name_or_digest.to_owned());
        if is_valid_name(name_or_digest) {
            let link = self.stages.join(BY_NAME).join(name_or_digest);
            if let Ok(target) = fs::read_link(&link) {
                let digest = target
                    .file_name()
                    .map(|d| d.to_string_lossy().into_owned())
                    .filter(|d| is_digest(d))
                    .ok_or_else(unknown)?;
                if self.stage_dir(&digest).is_dir() {
                    return self.load(&digest);
                }
                return Err(unknown());
            }
        }
        let wanted = name_or_digest.to_ascii_lowercase();
        if wanted.len() < MIN_PREFIX || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(unknown());
        }
        let matches: Vec<String> = self
            .digests()?
            .into_iter()
            .filter(|d| d.starts_with(&wanted))
            .collect();
        match matches.as_slice() {
            [digest] => self.load(digest),
            [] => Err(unknown()),
            _ => Err(Error::AmbiguousStage {
                prefix: name_or_digest.to_owned(),
                count: matches.len(),
            }),
        }
    }

    /// Resolve a stage and hold it for a run: until the lease is dropped,
    /// [`remove`](Self::remove) refuses it. Fails at once if the stage is being
    /// removed right now.
    pub fn lease(&self, name_or_digest: &str) -> Result<StageLease> {
        let stage = self.resolve(name_or_digest)?;
        let path = self.stage_dir(&stage.digest).join("lock");
        let file = File::open(&path).map_err(io("opening", &path))?;
        let lock = Flock::lock(file, FlockArg::LockSharedNonblock).map_err(|(_, errno)| {
            if errno == Errno::EWOULDBLOCK {
                Error::StageBusy {
                    stage: name_or_digest.to_owned(),
                    why: "being removed",
                }
            } else {
                Error::Sys {
                    what: "locking",
                    path: path.clone(),
                    source: errno,
                }
            }
        })?;
        // A removal that finished between resolve and lock has moved the
        // directory away: the lock we hold is on a dead file.
        if !stage.rootfs.is_dir() {
            return Err(Error::UnknownStage(name_or_digest.to_owned()));
        }
        debug!(digest = %stage.digest, "stage leased");
        Ok(StageLease { stage, _lock: lock })
    }

    /// Remove a stage and every name pointing at it. Refused, without waiting,
    /// while a run holds a lease on it.
    pub fn remove(&self, name_or_digest: &str) -> Result<()> {
        let stage = self.resolve(name_or_digest)?;
        let dir = self.stage_dir(&stage.digest);
        let lock_path = dir.join("lock");
        let file = File::open(&lock_path).map_err(io("opening", &lock_path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            if errno == Errno::EWOULDBLOCK {
                Error::StageBusy {
                    stage: name_or_digest.to_owned(),
                    why: "in use by a run",
                }
            } else {
                Error::Sys {
                    what: "locking",
                    path: lock_path.clone(),
                    source: errno,
                }
            }
        })?;
        // Move it out of sight first, so it vanishes from the store at once;
        // deleting a big tree takes a while.
        fs::create_dir_all(&self.tmp).map_err(io("creating", &self.tmp))?;
        let _busy = lock_dir(&dir)?;
        let doomed = self.tmp.join(format!(
            "removing-{}-{}-{}",
            std::process::id(),
            stage.digest,
            unique()
        ));
        fs::rename(&dir, &doomed).map_err(io("moving away", &dir))?;
        drop(lock);
        for sub in [BY_NAME, BY_FILE] {
            self.unlink_pointing_at(&self.stages.join(sub), &stage.digest)?;
        }
        fs::remove_dir_all(&doomed).map_err(io("removing", &doomed))?;
        info!(digest = %stage.digest, names = ?stage.names, "stage removed");
        Ok(())
    }

    /// Remove what interrupted `add`s and `remove`s left: unlocked
    /// `tmp/stage-*` and `tmp/removing-*` directories, and names or cache
    /// entries pointing at stages that are gone. Live operations hold a lock on
    /// their directory and are left alone. Returns how many things went.
    pub fn collect_garbage(&self) -> Result<usize> {
        let mut removed = 0;
        let rd = match fs::read_dir(&self.tmp) {
            Ok(rd) => Some(rd),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io("reading", &self.tmp)(e)),
        };
        for entry in rd.into_iter().flatten() {
            let entry = entry.map_err(io("reading", &self.tmp))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if !(name.starts_with("stage-") || name.starts_with("removing-")) || !path.is_dir() {
                continue;
            }
            match try_lock_dir(&path)? {
                Some(_lock) => {
                    fs::remove_dir_all(&path).map_err(io("removing", &path))?;
                    info!(dir = %path.display(), "removed what an interrupted stage add or rm left");
                    removed += 1;
                }
                None => debug!(dir = %path.display(), "in use; left alone"),
            }
        }
        for sub in [BY_NAME, BY_FILE] {
            let dir = self.stages.join(sub);
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for entry in rd {
                let entry = entry.map_err(io("reading", &dir))?;
                let dangling = match link_digest(&entry.path()) {
                    Some(digest) => !self.stage_dir(&digest).is_dir(),
                    None => fs::symlink_metadata(entry.path()).is_ok_and(|m| m.is_symlink()),
                };
                if dangling {
                    fs::remove_file(entry.path()).map_err(io("removing", entry.path()))?;
                    debug!(link = %entry.path().display(), "removed a dangling stage link");
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    fn stage_dir(&self, digest: &str) -> PathBuf {
        self.stages.join(digest)
    }

    /// The digests of the stages present.
    fn digests(&self) -> Result<Vec<String>> {
        let rd = match fs::read_dir(&self.stages) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("reading", &self.stages)(e)),
        };
        let mut digests = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io("reading", &self.stages))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_digest(&name) {
                digests.push(name);
            }
        }
        digests.sort();
        Ok(digests)
    }

    /// digest → names, from `by-name/`.
    fn names(&self) -> Result<BTreeMap<String, Vec<String>>> {
        let dir = self.stages.join(BY_NAME);
        let mut names: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(io("reading", &dir)(e)),
        };
        for entry in rd {
            let entry = entry.map_err(io("reading", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_valid_name(&name) {
                continue; // a temporary link mid-rename
            }
            if let Some(digest) = link_digest(&entry.path()) {
                names.entry(digest).or_default().push(name);
            }
        }
        for v in names.values_mut() {
            v.sort();
        }
        Ok(names)
    }

    fn load_record(&self, digest: &str) -> Result<Stage> {
        let path = self.stage_dir(digest).join("stage.json");
        let text = fs::read(&path).map_err(io("reading", &path))?;
        let r: Record = serde_json::from_slice(&text).map_err(|source| Error::Json {
            what: "parsing",
            path: path.clone(),
            source,
        })?;
        Ok(Stage {
            digest: digest.to_owned(),
            names: Vec::new(),
            rootfs: self.stage_dir(digest).join("rootfs"),
            files: r.files,
            bytes: r.bytes,
            added: r.added,
            source: r.source,
            tarball_bytes: r.tarball_bytes,
        })
    }

    fn load(&self, digest: &str) -> Result<Stage> {
        let mut stage = self.load_record(digest)?;
        stage.names = self.names()?.remove(digest).unwrap_or_default();
        Ok(stage)
    }

    /// Point `by-name/<name>` at `digest`, atomically (symlink then rename).
    fn set_name(&self, name: &str, digest: &str) -> Result<()> {
        let dir = self.stages.join(BY_NAME);
        let link = dir.join(name);
        let target = PathBuf::from("..").join(digest);
        match fs::read_link(&link) {
            Ok(t) if t == target => return Ok(()),
            Ok(t) => info!(name, from = %t.display(), to = digest, "moving stage name"),
            Err(_) => {}
        }
        fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let tmp = dir.join(format!(".{name}.{}", unique()));
        std::os::unix::fs::symlink(&target, &tmp).map_err(io("creating symlink", &tmp))?;
        fs::rename(&tmp, &link).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io("renaming a symlink to", &link)(e)
        })?;
        debug!(name, digest, "stage named");
        Ok(())
    }

    fn cached_digest(&self, key: &str) -> Option<String> {
        link_digest(&self.stages.join(BY_FILE).join(key))
    }

    /// Remember which digest the file with identity `key` has. Best effort: a
    /// missing entry only costs a re-hash next time.
    fn cache_digest(&self, key: &str, digest: &str) {
        let dir = self.stages.join(BY_FILE);
        let link = dir.join(key);
        let tmp = dir.join(format!(".{key}.{}", unique()));
        let made = fs::create_dir_all(&dir)
            .and_then(|()| std::os::unix::fs::symlink(PathBuf::from("..").join(digest), &tmp))
            .and_then(|()| fs::rename(&tmp, &link));
        if let Err(e) = made {
            let _ = fs::remove_file(&tmp);
            debug!(error = %e, link = %link.display(), "digest not cached");
        }
    }

    /// Remove the symlinks in `dir` that point at `digest`.
    fn unlink_pointing_at(&self, dir: &Path, digest: &str) -> Result<()> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("reading", dir)(e)),
        };
        for entry in rd {
            let entry = entry.map_err(io("reading", dir))?;
            if link_digest(&entry.path()).as_deref() == Some(digest) {
                fs::remove_file(entry.path()).map_err(io("removing", entry.path()))?;
            }
        }
        Ok(())
    }
}

/// The digest a `../<digest>` symlink points at.
fn link_digest(link: &Path) -> Option<String> {
    let target = fs::read_link(link).ok()?;
    let digest = target.file_name()?.to_string_lossy().into_owned();
    is_digest(&digest).then_some(digest)
}

/// Hex sha256 of the file at `path`, reporting bytes read to `progress`.
fn hash_file(path: &Path, progress: &dyn Fn(u64)) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = File::open(path).map_err(io("opening", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io("reading", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        progress(total);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Lock directory `path` exclusively, waiting if need be.
fn lock_dir(path: &Path) -> Result<Flock<File>> {
    let dir = File::open(path).map_err(io("opening", path))?;
    Flock::lock(dir, FlockArg::LockExclusive).map_err(|(_, source)| Error::Sys {
        what: "locking",
        path: path.to_owned(),
        source,
    })
}

/// Lock directory `path` exclusively if no one else holds it.
fn try_lock_dir(path: &Path) -> Result<Option<Flock<File>>> {
    let dir = File::open(path).map_err(io("opening", path))?;
    match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, source)) => Err(Error::Sys {
            what: "locking",
            path: path.to_owned(),
            source,
        }),
    }
}

fn write_record(path: &Path, record: &Record) -> Result<()> {
    let json = serde_json::to_vec_pretty(record).map_err(|source| Error::Json {
        what: "serialising",
        path: path.to_owned(),
        source,
    })?;
    fs::write(path, json).map_err(io("writing", path))
}

/// The identity of a file for the digest cache: device, inode, size, mtime and
/// ctime (which no one can set back), so any change to the file means a re-hash.
fn file_key(meta: &fs::Metadata) -> String {
    format!(
        "{:x}-{:x}-{:x}-{}.{}-{}.{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    )
}

fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A stage name is one harmless path component: letters, digits and `._+-`,
/// not starting with a dot (the store's rule for every user-given name).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
}

fn check_name(name: &str) -> Result<()> {
    if is_valid_name(name) && !is_digest(name) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid stage name {name:?}: use letters, digits and ._+- (not starting with a dot, not a digest)"
        )))
    }
}

/// The name a tarball gets when none is given: its file name without the
/// archive suffix (`stage4-amd64-2026.tar.xz` → `stage4-amd64-2026`).
pub fn default_name(tarball: &Path) -> Option<String> {
    const SUFFIXES: &[&str] = &[
        ".tar.xz",
        ".tar.bz2",
        ".tar.gz",
        ".tar.zst",
        ".tar.zstd",
        ".tbz2",
        ".tbz",
        ".tgz",
        ".txz",
        ".tzst",
        ".tar",
    ];
    let file = tarball.file_name()?.to_str()?;
    let stem = SUFFIXES
        .iter()
        .find_map(|s| file.strip_suffix(s))
        .unwrap_or(file);
    (is_valid_name(stem) && !is_digest(stem)).then(|| stem.to_owned())
}

fn default_name_for(tarball: &Path) -> Result<String> {
    default_name(tarball).ok_or_else(|| {
        Error::Invalid(format!(
            "cannot derive a stage name from {}: give one with --name",
            tarball.display()
        ))
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A suffix unique within this host for temporary names: pid and a counter.
fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_drop_the_archive_suffix() {
        let n = |s: &str| default_name(Path::new(s));
        assert_eq!(
            n("/x/stage4-amd64-2026.tar.xz").as_deref(),
            Some("stage4-amd64-2026")
        );
        assert_eq!(n("stage3.tbz2").as_deref(), Some("stage3"));
        assert_eq!(n("s.tar.zst").as_deref(), Some("s"));
        assert_eq!(n("plain.tar").as_deref(), Some("plain"));
        assert_eq!(n("no suffix here"), None);
        assert_eq!(n(".hidden.tar"), None);
    }

    #[test]
    fn digests_are_64_lowercase_hex() {
        assert!(is_digest(&"a".repeat(64)));
        assert!(!is_digest(&"A".repeat(64)));
        assert!(!is_digest(&"a".repeat(63)));
        assert!(!is_digest(BY_NAME));
    }

    #[test]
    fn names_must_be_one_harmless_component() {
        assert!(check_name("stage4").is_ok());
        assert!(check_name("../x").is_err());
        assert!(check_name(".x").is_err());
        assert!(check_name(&"b".repeat(64)).is_err());
    }

    #[test]
    fn resolving_in_an_empty_store_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let s = StageStore::new(dir.path().join("stages"), dir.path().join("tmp"));
        assert!(s.list().unwrap().is_empty());
        let err = s.resolve("stage4").unwrap_err().to_string();
        assert_eq!(err, "no stage stage4 (see `portroot stage list`)");
    }
}
