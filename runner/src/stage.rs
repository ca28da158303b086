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
mod files;
mod names;
mod pipe;
pub(crate) mod unpack;

#[doc(hidden)]
pub use self::unpack::unpack_bytes;
use crate::digest::StageDigest;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tracing::{debug, info};

use self::files::{
    file_key, hash_file, link_digest, lock_dir, now, try_lock_dir, unique, write_record, Record,
};
pub use self::names::default_name;
use self::names::{check_name, default_name_for, is_digest};
use self::pipe::{Finished, Pipe};
use crate::error::{io, Error, Result};
use crate::name::is_valid_name;

/// Directory of the name symlinks inside `stages/`.
const BY_NAME: &str = "by-name";
/// Directory of the digest cache symlinks inside `stages/`.
const BY_FILE: &str = "by-file";
/// The shortest digest prefix [`StageStore::resolve`] accepts.
pub const MIN_PREFIX: usize = 4;

/// One unpacked stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// Hex sha256 of the tarball file.
    pub digest: StageDigest,
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

/// A tarball unpacked into scratch space, not yet in the store.
struct Scratch {
    /// `tmp/stage-PID-*`, holding `rootfs/`; removed on drop.
    work: tempfile::TempDir,
    /// The lock telling `collect_garbage` the unpack is live.
    _busy: Flock<File>,
    /// The tarball's compression and digest.
    finished: Finished,
    /// What was unpacked.
    stats: unpack::Unpacked,
}

/// A stage tarball's metadata, if it is a non-empty regular file.
fn check_tarball(tarball: &Path) -> Result<fs::Metadata> {
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
    Ok(meta)
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
        self.add_tarball(tarball, name, None, progress)
            .map(|a| a.stage)
    }

    /// [`add`](Self::add), telling also whether anything was unpacked. With
    /// `expected` (a hex sha256), the tarball is added only if the bytes read
    /// have that digest, checked before anything is installed or named.
    pub fn add_tarball(
        &self,
        tarball: &Path,
        name: Option<&str>,
        expected: Option<&str>,
        progress: &dyn Fn(u64),
    ) -> Result<Added> {
        let start = Instant::now();
        if let Some(name) = name {
            check_name(name)?;
        }
        let meta = check_tarball(tarball)?;
        let key = file_key(&meta);
        let check = |digest: &str| match expected {
            Some(want) if want != digest => Err(Error::DigestMismatch {
                path: tarball.to_owned(),
                got: digest.to_owned(),
                want: want.to_owned(),
            }),
            _ => Ok(()),
        };
        if let Some(added) = self.find_added(tarball, &meta, &key, name, &check, progress)? {
            return Ok(added);
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

        let scratch = self.unpack_to_scratch(tarball, progress)?;
        let digest = scratch.finished.digest.clone();
        // Still in scratch: a wrong digest leaves nothing.
        check(&digest)?;
        let unpacked = self.install(scratch, tarball, meta.len())?;
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

    /// The stage a tarball is already in the store as, known by its file
    /// identity or, for a copy of the same size as a stage's, by its digest;
    /// named `name` if one is given.
    fn find_added(
        &self,
        tarball: &Path,
        meta: &fs::Metadata,
        key: &str,
        name: Option<&str>,
        check: &dyn Fn(&str) -> Result<()>,
        progress: &dyn Fn(u64),
    ) -> Result<Option<Added>> {
        let found = |digest: &str| -> Result<Option<Added>> {
            if let Some(name) = name {
                self.set_name(name, digest)?;
            }
            Ok(Some(Added {
                stage: self.load(digest)?,
                unpacked: false,
                named: name.map(str::to_owned),
            }))
        };
        if let Some(digest) = self.cached_digest(key) {
            if self.stage_dir(&digest).is_dir() {
                debug!(%digest, "tarball known by its file identity, not re-hashed");
                check(&digest)?;
                return found(&digest);
            }
        }
        // A copy of a tarball already in the store (same size as one of them):
        // hashing first costs one read at memory speed and can save the whole
        // unpack.
        if self.list()?.iter().any(|s| s.tarball_bytes == meta.len()) {
            let digest = hash_file(tarball, progress)?;
            check(&digest)?;
            if self.stage_dir(&digest).is_dir() {
                debug!(%digest, "same content as a stage in the store");
                self.cache_digest(key, &digest);
                return found(&digest);
            }
        }
        Ok(None)
    }

    /// Unpack `tarball` into a new scratch directory of the store's `tmp/`,
    /// hashing it on the way.
    fn unpack_to_scratch(&self, tarball: &Path, progress: &dyn Fn(u64)) -> Result<Scratch> {
        fs::create_dir_all(&self.tmp).map_err(io("creating", &self.tmp))?;
        // `stage-PID-`: a signal handler removes its own (see the store's
        // scratch prefixes); `collect_garbage` goes by the lock below.
        let work = tempfile::Builder::new()
            .prefix(&format!("stage-{}-", std::process::id()))
            .tempdir_in(&self.tmp)
            .map_err(io("creating a directory in", &self.tmp))?;
        // Held until the directory is renamed into place or deleted, so that
        // `collect_garbage` can tell a live unpack from one a crash left.
        let busy = lock_dir(work.path())?;
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
        let finished = finished.map_err(io("reading", tarball))?;
        progress(read.load(Ordering::Relaxed));
        debug!(compression = %finished.compression, digest = %finished.digest, "unpacked");
        Ok(Scratch {
            work,
            _busy: busy,
            finished,
            stats,
        })
    }

    /// Rename an unpacked scratch directory into place as `stages/<digest>`:
    /// whether it went in (false: the same tarball was there already).
    fn install(&self, scratch: Scratch, tarball: &Path, tarball_bytes: u64) -> Result<bool> {
        let Scratch {
            work,
            finished,
            stats,
            ..
        } = &scratch;
        let digest = &finished.digest;
        let dest = self.stage_dir(digest);
        if dest.is_dir() {
            debug!(%digest, "same tarball already in the store; dropping this unpack");
            return Ok(false);
        }
        let record = Record {
            digest: digest.clone(),
            source: tarball
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            compression: finished.compression.to_string(),
            tarball_bytes,
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
                let _ = scratch.work.keep();
                Ok(true)
            }
            // Another `stage add` of the same tarball won the race.
            Err(e) if dest.is_dir() => {
                debug!(%digest, error = %e, "lost the race to add the same tarball");
                Ok(false)
            }
            Err(e) => Err(io("moving the unpacked stage to", &dest)(e)),
        }
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
        let Some(parsed) = StageDigest::parse(digest) else {
            return Err(Error::UnknownStage(digest.to_owned()));
        };
        Ok(Stage {
            digest: parsed,
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

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn resolving_in_an_empty_store_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let s = StageStore::new(dir.path().join("stages"), dir.path().join("tmp"));
        assert!(s.list().unwrap().is_empty());
        let err = s.resolve("stage4").unwrap_err().to_string();
        assert_eq!(err, "no stage stage4 (see `portroot stage list`)");
    }

    #[test]
    fn names_must_be_one_harmless_component() {
        assert!(check_name("stage4").is_ok());
        assert!(check_name("../x").is_err());
        assert!(check_name(".x").is_err());
        assert!(check_name(&"b".repeat(64)).is_err());
    }

    #[test]
    fn digests_are_64_lowercase_hex() {
        assert!(is_digest(&"a".repeat(64)));
        assert!(!is_digest(&"A".repeat(64)));
        assert!(!is_digest(&"a".repeat(63)));
        assert!(!is_digest(BY_NAME));
    }
}
