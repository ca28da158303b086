//! Importing portage snapshot tarballs into git, and reading them back.
//!
//! ```text
//! FILE --read once: md5, gpgv's stdin, progress --> decompress          [decoder thread]
//!      --bounded channel of chunks--> tar entries, path checks             [reader thread]
//!      --bounded channel--> blob ids, deflate                              [2 worker threads]
//!      --bounded channel--> one pack, each object once; the tree            [calling thread]
//!      --> trees bottom-up into the same pack --> checks --> install pack
//!      --> commit + annotated tag --> refs/heads/main + refs/tags/DATE in one transaction
//! ```
//!
//! Nothing is extracted: each entry's content is in memory only while it is
//! hashed and deflated, and the bounded channel caps how many are in flight.
//! All objects go into one pack in the store's `tmp/` (see [`pack`]), and the
//! pack only enters the repository once the whole tarball has been read,
//! verified (gpgv's verdict on the bytes read, see [`verify`]) and judged
//! newer, so bad input leaves the repository untouched. Each channel end
//! belongs to one thread, so an error in any thread ends them all.
//! Refs move last, together, in one libgit2 reference transaction, under an
//! exclusive `flock` held for the whole import ([`ImportLock`]).

pub mod diff;
pub mod error;
pub mod pack;
pub mod remote;
pub mod sync;
pub mod tag;
pub mod tree;
pub mod verify;

use std::cell::RefCell;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use git2::{Oid, Repository, RepositoryInitOptions, Signature};
use md5::{Digest, Md5};
use tracing::{debug, info, info_span};

pub use self::error::{Error, Result};
use self::pack::{object_id, Deflater, FinishedPack, ObjectKind, PackWriter, PackedObject};
use self::tag::{CommitFacts, SnapshotDate, SnapshotTag, MAIN_REF};
use self::tree::{
    check_entry, check_symlink, EntryKind, FileMode, PathSplitter, SnapshotPath, TreeBuilder,
};
use crate::store::Store;
use portroot_runner::archive::{decompress, Compression};

/// The largest single file accepted. Portage trees hold nothing near it (their
/// biggest files are a few MB); the cap keeps memory bounded on hostile input.
pub const MAX_FILE_SIZE: u64 = 64 << 20;

/// Batches in flight on each channel. Entries travel in batches of up to
/// [`BATCH_ITEMS`] entries or [`BATCH_BYTES`] of content: handing over 100k
/// single entries cost ~20% of the import in futex wake-ups and context
/// switches. In flight at most: (2 x depth + workers) x 1 MiB.
const CHANNEL_DEPTH: usize = 8;

/// Entries per batch.
const BATCH_ITEMS: usize = 128;

/// Content bytes per batch (a batch ends after the entry that crosses it).
const BATCH_BYTES: usize = 1 << 20;

/// Threads hashing and deflating, at most. Two, for this project's two-core
/// build servers, but only the first runs from the start: the second starts
/// once the reader finds the channel full, i.e. when hashing and deflating,
/// not decompression, hold the import back (gzip, zstd, a plain tar). With xz
/// the decoder fills one core and one worker keeps up on the other, where a
/// second one only adds to the threads the decoder shares its core with
/// (bench: 1.65 s with both from the start, 1.53 s lazily).
const WORKERS: usize = 2;

/// What to import and how.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The snapshot tarball.
    pub file: PathBuf,
    /// The repository name in the store (`repos/<repo>.git`).
    pub repo: String,
    /// The md5 sum file; `None` uses `FILE.md5sum` when it exists.
    pub md5sum: Option<PathBuf>,
    /// The keyring to check `FILE.gpgsig` against; `None` skips the signature.
    pub keyring: Option<PathBuf>,
    /// `false` skips both md5 and signature checks.
    pub verify: bool,
    /// Import even if older than the newest snapshot.
    pub allow_older: bool,
    /// Replace a tag that exists with a different tree.
    pub force: bool,
    /// Accept a snapshot stamped more than a day past this machine's clock
    /// (see [`tag::check_timestamp`]).
    pub allow_future: bool,
    /// The snapshot date when the tarball has no `metadata/timestamp.x`
    /// (it also overrides one that is there).
    pub date: Option<SnapshotDate>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl ImportOptions {
    /// Defaults for importing `file` into the `gentoo` repository, verified.
    pub fn new(file: impl Into<PathBuf>) -> ImportOptions {
        ImportOptions {
            file: file.into(),
            repo: crate::store::DEFAULT_REPO.to_owned(),
            md5sum: None,
            keyring: None,
            verify: true,
            allow_older: false,
            force: false,
            allow_future: false,
            date: None,
            progress: false,
        }
    }
}

/// How an import ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new commit and tag were written.
    Imported(Imported),
    /// The snapshot is already there: same timestamp as the newest tag, or
    /// its tag exists with the same tree. Nothing changed.
    NoNewer {
        /// The snapshot's date.
        date: SnapshotDate,
        /// The existing commit it matches.
        commit: Oid,
    },
}

/// What a successful import wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The tag date.
    pub date: SnapshotDate,
    /// The new commit.
    pub commit: Oid,
    /// Its tree.
    pub tree: Oid,
    /// Files (and symlinks) in the tree.
    pub files: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Objects written into the new pack (those already in the repository are not).
    pub new_objects: usize,
    /// Whether an existing tag was replaced (`--force`).
    pub replaced: bool,
    /// Whether `main` moved (not for an older snapshot imported with `--allow-older`).
    pub moved_main: bool,
    /// Wall time of the import.
    pub elapsed: Duration,
}

/// The exclusive lock an import holds on a repository, for as long as it lives.
///
/// It lives in the store's `tmp/` rather than in the repository so that it
/// exists before the first import creates the repository, and a refused first
/// import leaves no repository behind.
#[derive(Debug)]
pub struct ImportLock {
    _lock: nix::fcntl::Flock<File>,
}

impl ImportLock {
    /// Lock repository `repo` of `store`. If another import holds it: with
    /// `wait`, call `on_wait` once and block until it is free; without,
    /// fail with [`Error::Locked`].
    pub fn acquire(
        store: &Store,
        repo: &str,
        wait: bool,
        on_wait: impl FnOnce(&Path),
    ) -> Result<ImportLock> {
        use nix::fcntl::{Flock, FlockArg};
        let dir = store.tmp_dir();
        fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        let path = dir.join(format!("{repo}.git.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io("opening", &path))?;
        let locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                if !wait {
                    return Err(Error::Locked {
                        repo: repo.to_owned(),
                        lock: path,
                    });
                }
                on_wait(&path);
                Flock::lock(file, FlockArg::LockExclusive)
                    .map_err(|(_, e)| Error::io("locking", &path)(e.into()))?
            }
            Err((_, e)) => return Err(Error::io("locking", &path)(e.into())),
        };
        Ok(ImportLock { _lock: locked })
    }
}

/// The repository `name` of `store` if it exists yet.
fn open_existing(store: &Store, name: &str) -> Result<Option<Repository>> {
    if store.repo_path(name).is_dir() {
        open_repo(store, name).map(Some)
    } else {
        Ok(None)
    }
}

/// Open the existing repository `name` of `store`.
pub fn open_repo(store: &Store, name: &str) -> Result<Repository> {
    let path = store.repo_path(name);
    if !path.is_dir() {
        return Err(Error::NoRepo { path });
    }
    Repository::open_bare(&path)
        .map_err(Error::git(format!("opening repository {}", path.display())))
}

/// The snapshot tags of repository `name`, oldest first.
pub fn list_snapshots(store: &Store, name: &str) -> Result<Vec<SnapshotTag>> {
    tag::list_tags(&open_repo(store, name)?)
}

/// Import a snapshot tarball (the caller holds the repository's [`ImportLock`]).
pub fn import_snapshot(store: &Store, opts: &ImportOptions, _lock: &ImportLock) -> Result<Outcome> {
    let span = info_span!("import", snapshot = %opts.file.display());
    let _enter = span.enter();
    let started = Instant::now();

    // The signature is checked over the bytes this import reads (see
    // [`verify`]): gpgv runs along and its verdict is in before the pack
    // enters the repository.
    let mut signature = match (&opts.keyring, opts.verify) {
        (Some(keyring), true) => Some(verify::SignatureCheck::start(&opts.file, keyring)?),
        _ => None,
    };
    let gpgv = signature.as_mut().and_then(|s| s.input());
    let expected_md5 = expected_md5(opts)?;
    let existing = open_existing(store, &opts.repo)?;

    let (_work, mut pack) = scratch_pack(store)?;
    let (consumed, streamed) = stream_into_pack(
        opts,
        existing.as_ref(),
        expected_md5.is_some(),
        gpgv,
        &mut pack,
    )?;
    if let Some(check) = signature {
        check.finish()?;
        debug!("signature verified");
    }
    check_streamed(opts, expected_md5.as_deref(), &streamed, &consumed)?;
    let timestamp = snapshot_timestamp(opts, &consumed)?;
    tag::check_timestamp(timestamp, tag::now(), opts.allow_future)?;
    let date = SnapshotDate::from_timestamp(timestamp);
    let tag_name = date.to_string();

    let (root, finished) = pack_trees(&consumed.tree, pack, existing.as_ref())?;
    let new_objects = finished.as_ref().map_or(0, |f| f.objects);

    // Judge the snapshot against what the repository has.
    let tags = match &existing {
        Some(r) => tag::list_tags(r)?,
        None => Vec::new(),
    };
    let judgement = judge_tag(&tags, &tag_name, timestamp, root);
    if let Some(outcome) = settle(&judgement, opts, date, &tag_name)? {
        return Ok(outcome);
    }
    drop(existing);

    let facts = consumed.facts(date);
    let repo = ensure_repo(store, &opts.repo)?;
    let written = write_snapshot(&repo, finished, root, timestamp, &facts, &tag_name)?;
    let elapsed = started.elapsed();
    info!(
        tag = %tag_name,
        commit = %written.commit,
        files = facts.files,
        bytes = facts.bytes,
        new_objects,
        secs = elapsed.as_secs_f64(),
        "imported"
    );
    Ok(Outcome::Imported(Imported {
        date,
        commit: written.commit,
        tree: root,
        files: facts.files,
        bytes: facts.bytes,
        new_objects,
        replaced: judgement == TagJudgement::Conflicting,
        moved_main: written.moved_main,
        elapsed,
    }))
}

/// Where a snapshot stands against the tags a repository has, before the
/// options (`--force`, `--allow-older`) have their say.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TagJudgement {
    /// No tag of its name, and newer than every tag (or the first).
    New,
    /// Its tag exists with the same tree: already imported.
    Same {
        /// The tagged commit.
        commit: Oid,
    },
    /// Its tag exists with another tree (replaced only with `--force`).
    Conflicting,
    /// No tag of its name, but the newest tag has the same timestamp.
    SameTime {
        /// The newest tag's name.
        newest: String,
        /// The newest tag's commit.
        commit: Oid,
    },
    /// No tag of its name, and older than the newest tag (imported only with
    /// `--allow-older`).
    Older {
        /// The newest tag's name.
        newest: String,
    },
}

/// Judge a snapshot (tag `tag_name`, `timestamp`, tree `root`) against `tags`.
fn judge_tag(tags: &[SnapshotTag], tag_name: &str, timestamp: i64, root: Oid) -> TagJudgement {
    if let Some(t) = tags.iter().find(|t| t.name == tag_name) {
        return if t.tree == root {
            TagJudgement::Same { commit: t.commit }
        } else {
            TagJudgement::Conflicting
        };
    }
    match tags.iter().max_by_key(|t| t.time) {
        Some(n) if n.time == timestamp => TagJudgement::SameTime {
            newest: n.name.clone(),
            commit: n.commit,
        },
        Some(n) if n.time > timestamp => TagJudgement::Older {
            newest: n.name.clone(),
        },
        _ => TagJudgement::New,
    }
}

/// What the options make of a judgement: the outcome when the import stops
/// here, `None` when it goes on to write the snapshot.
fn settle(
    judgement: &TagJudgement,
    opts: &ImportOptions,
    date: SnapshotDate,
    tag_name: &str,
) -> Result<Option<Outcome>> {
    match judgement {
        TagJudgement::Same { commit } => {
            info!(tag = %tag_name, "snapshot already imported");
            Ok(Some(Outcome::NoNewer {
                date,
                commit: *commit,
            }))
        }
        TagJudgement::SameTime { newest, commit } => {
            info!(tag = %newest, "no newer snapshot");
            Ok(Some(Outcome::NoNewer {
                date,
                commit: *commit,
            }))
        }
        TagJudgement::Conflicting if !opts.force => Err(Error::TagExists {
            tag: tag_name.to_owned(),
        }),
        TagJudgement::Older { newest } if !opts.allow_older => Err(Error::Older {
            date: tag_name.to_owned(),
            newest: newest.clone(),
        }),
        TagJudgement::New | TagJudgement::Conflicting | TagJudgement::Older { .. } => Ok(None),
    }
}

/// A scratch directory in the store's `tmp/` (removed on drop) and a pack
/// being written in it.
fn scratch_pack(store: &Store) -> Result<(tempfile::TempDir, PackWriter)> {
    let tmp_root = store.tmp_dir();
    fs::create_dir_all(&tmp_root).map_err(Error::io("creating", &tmp_root))?;
    let work = tempfile::Builder::new()
        .prefix(&Store::scratch_prefix("import"))
        .tempdir_in(&tmp_root)
        .map_err(Error::io("creating a directory in", &tmp_root))?;
    let pack = PackWriter::create(work.path())?;
    Ok((work, pack))
}

/// The md5 sum the tarball must have: from `--md5sum` or `FILE.md5sum`; none
/// when there is no sum file or verification is off.
fn expected_md5(opts: &ImportOptions) -> Result<Option<String>> {
    if !opts.verify {
        return Ok(None);
    }
    match opts
        .md5sum
        .clone()
        .or_else(|| verify::default_md5_file(&opts.file))
    {
        Some(f) => Ok(Some(verify::read_md5sum(&f, &opts.file)?)),
        None => {
            debug!("no md5 sum file, md5 not checked");
            Ok(None)
        }
    }
}

/// Run the pipeline over the tarball: every object into `pack`, the tree
/// gathered in memory.
fn stream_into_pack(
    opts: &ImportOptions,
    existing: Option<&Repository>,
    want_md5: bool,
    gpgv: Option<verify::GpgvInput>,
    pack: &mut PackWriter,
) -> Result<(Consumed, Streamed)> {
    // Reader thread: tar parsing, over a decoder thread of its own. Workers:
    // object ids and deflating (the heavier half on a Gentoo tree). This
    // thread: pack writes and the tree. Measured in benches/import.rs.
    let (tx, rx) = sync_channel::<Vec<Item>>(CHANNEL_DEPTH);
    let (done_tx, done_rx) = sync_channel::<Vec<Hashed>>(CHANNEL_DEPTH);
    // Every end of every channel is owned by the one thread that uses it, so
    // that a thread that stops, for an error of its own or because its
    // neighbour hung up, hangs up on both sides: the error travels up and
    // down the pipeline and every thread ends. (The workers share the
    // reader's channel: it closes when the last of them drops its handle.)
    let rx = Arc::new(Mutex::new(rx));
    // Each worker checks the repository for objects it already has, through
    // its own handle (a Repository may move between threads, not be shared).
    let mut odbs = Vec::new();
    for _ in 0..WORKERS {
        odbs.push(match existing {
            Some(r) => Some(
                Repository::open_bare(r.path()).map_err(Error::git("opening the repository"))?,
            ),
            None => None,
        });
    }
    let file = opts.file.clone();
    let progress = opts.progress;
    let mut idle = Vec::new();
    let mut starts = Vec::new();
    for i in 0..WORKERS {
        if i == 0 {
            starts.push(None);
        } else {
            let (start_tx, start_rx) = sync_channel(1);
            idle.push(start_tx);
            starts.push(Some(start_rx));
        }
    }
    let batches = Batches { tx, idle };
    let (consumed, streamed) = std::thread::scope(|s| {
        let reader = s.spawn(move || read_entries(&file, batches, progress, want_md5, gpgv));
        for (repo, start) in odbs.into_iter().zip(starts) {
            let done_tx = done_tx.clone();
            let rx = Arc::clone(&rx);
            s.spawn(move || hash_and_deflate(rx, done_tx, repo, start));
        }
        drop(done_tx);
        drop(rx);
        let consumed = consume(done_rx, pack);
        let streamed = match reader.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        (consumed, streamed)
    });
    // The packer's error first: it is why the reader stopped, if it did.
    let consumed = consumed?;
    let streamed = streamed?.expect("invariant: the packer only hangs up after an error");
    debug!(
        compression = %streamed.compression,
        compressed = streamed.compressed,
        entries = streamed.entries,
        "tarball read"
    );
    Ok((consumed, streamed))
}

/// The checks on what was read: the md5 sum, symlinks inside the tree, and
/// at least one file.
fn check_streamed(
    opts: &ImportOptions,
    expected_md5: Option<&str>,
    streamed: &Streamed,
    consumed: &Consumed,
) -> Result<()> {
    if let (Some(expected), Some(actual)) = (expected_md5, &streamed.md5) {
        if expected != actual {
            return Err(Error::Md5Mismatch {
                path: opts.file.clone(),
                expected: expected.to_owned(),
                actual: actual.clone(),
            });
        }
        debug!(md5 = %actual, "md5 verified");
    }
    consumed.tree.check_symlinks()?;
    if consumed.tree.files() == 0 {
        return Err(Error::Empty {
            path: opts.file.clone(),
        });
    }
    Ok(())
}

/// The snapshot's timestamp: `--date`, else `metadata/timestamp.x`.
fn snapshot_timestamp(opts: &ImportOptions, consumed: &Consumed) -> Result<i64> {
    match (opts.date, &consumed.timestamp_x) {
        (Some(date), _) => Ok(date.to_timestamp()),
        (None, Some(content)) => tag::parse_timestamp_x(content),
        (None, None) => Err(Error::NoTimestamp {
            path: opts.file.clone(),
        }),
    }
}

/// Write the trees bottom-up into the pack (those the pack or repository has
/// already are left out) and finish it; the root tree's id and the pack.
fn pack_trees(
    tree: &TreeBuilder,
    pack: PackWriter,
    existing: Option<&Repository>,
) -> Result<(Oid, Option<FinishedPack>)> {
    let odb = existing
        .map(|r| r.odb().map_err(Error::git("opening the object database")))
        .transpose()?;
    // The trees are handed to the pack as a whole, so that it can hash what it
    // holds already while it deflates them (see `PackWriter::finish_with`).
    let mut trees = Vec::new();
    let mut new_trees = std::collections::HashSet::new();
    let root = tree.write(|bytes| {
        let oid = object_id(ObjectKind::Tree, bytes);
        if !pack.contains(&oid)
            && !new_trees.contains(&oid)
            && !odb.as_ref().is_some_and(|o| o.exists(oid))
        {
            new_trees.insert(oid);
            trees.push((ObjectKind::Tree, oid, bytes.to_vec()));
        }
        Ok(oid)
    })?;
    drop(odb);
    Ok((root, pack.finish_with(trees)?))
}

struct Written {
    commit: Oid,
    moved_main: bool,
}

/// Install the pack, write the commit and tag, and move the refs together.
fn write_snapshot(
    repo: &Repository,
    pack: Option<FinishedPack>,
    root: Oid,
    timestamp: i64,
    facts: &CommitFacts,
    tag_name: &str,
) -> Result<Written> {
    let installed = match pack {
        Some(pack) => pack.install(&repo.path().join("objects/pack"))?,
        None => Vec::new(),
    };
    // Until the refs moved, a failure (a full disk, say) takes out again what
    // this import put into the repository: the pack and the loose commit and tag.
    let mut loose = Vec::new();
    let written = refer_snapshot(repo, root, timestamp, facts, tag_name, &mut loose);
    if written.is_err() {
        pack::uninstall(&installed);
        for oid in loose {
            let hex = oid.to_string();
            let path = repo.path().join("objects").join(&hex[..2]).join(&hex[2..]);
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an object of a failed import");
            }
        }
    }
    written
}

/// The second half of [`write_snapshot`]: the commit, the tag and the refs.
/// `loose` gets the objects written that the repository did not have.
fn refer_snapshot(
    repo: &Repository,
    root: Oid,
    timestamp: i64,
    facts: &CommitFacts,
    tag_name: &str,
    loose: &mut Vec<Oid>,
) -> Result<Written> {
    repo.odb()
        .and_then(|o| o.refresh())
        .map_err(Error::git("rescanning the object database"))?;
    let tree = repo
        .find_tree(root)
        .map_err(Error::git(format!("reading tree {root}")))?;
    let sig = Signature::new(
        tag::IDENTITY.0,
        tag::IDENTITY.1,
        &git2::Time::new(timestamp, 0),
    )
    .map_err(Error::git("making the signature"))?;

    // Parent: the newest snapshot before this one: `main`, unless this one
    // is older than main (imported with --allow-older) or replaces main's own
    // tag (--force), then the newest earlier tag.
    let main = repo
        .find_reference(MAIN_REF)
        .ok()
        .and_then(|r| r.peel_to_commit().ok());
    let main_time = main.as_ref().map(|c| c.time().seconds());
    let parent = parent_commit(repo, main.as_ref(), timestamp, tag_name)?;
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    let odb = repo
        .odb()
        .map_err(Error::git("opening the object database"))?;
    let buffer = repo
        .commit_create_buffer(&sig, &sig, &facts.message(), &tree, &parents)
        .map_err(Error::git("making the commit"))?;
    let commit = object_id(ObjectKind::Commit, &buffer);
    if !odb.exists(commit) {
        loose.push(commit);
    }
    let written = odb
        .write(git2::ObjectType::Commit, &buffer)
        .map_err(Error::git("writing the commit"))?;
    debug_assert_eq!(written, commit);
    let commit_obj = repo
        .find_object(commit, Some(git2::ObjectType::Commit))
        .map_err(Error::git("reading the new commit"))?;
    let tag = repo
        .tag_annotation_create(tag_name, &commit_obj, &sig, &tag::tag_message(facts.date))
        .map_err(Error::git("writing the tag"))?;
    // A tag object names its commit: a new commit means a new tag.
    if loose.contains(&commit) {
        loose.push(tag);
    }

    let moved_main = main_time.is_none_or(|t| t <= timestamp);
    move_refs(repo, tag_name, commit, tag, moved_main)?;
    Ok(Written { commit, moved_main })
}

/// The parent of a new snapshot commit: `main`'s commit if older than
/// `timestamp`, else the newest tag before it but `tag_name`.
fn parent_commit<'r>(
    repo: &'r Repository,
    main: Option<&git2::Commit<'r>>,
    timestamp: i64,
    tag_name: &str,
) -> Result<Option<git2::Commit<'r>>> {
    match main {
        Some(c) if c.time().seconds() < timestamp => Ok(Some(c.clone())),
        _ => {
            let tags = tag::list_tags(repo)?;
            tags.iter()
                .filter(|t| t.time < timestamp && t.name != tag_name)
                .max_by_key(|t| t.time)
                .map(|t| repo.find_commit(t.commit))
                .transpose()
                .map_err(Error::git("reading the parent commit"))
        }
    }
}

/// Point `refs/tags/<tag_name>` at `tag` and, if `moved_main`, `main` at
/// `commit`, in one reference transaction.
fn move_refs(
    repo: &Repository,
    tag_name: &str,
    commit: Oid,
    tag: Oid,
    moved_main: bool,
) -> Result<()> {
    let tag_ref = format!("refs/tags/{tag_name}");
    let refs = || -> std::result::Result<(), git2::Error> {
        let mut tx = repo.transaction()?;
        tx.lock_ref(&tag_ref)?;
        if moved_main {
            tx.lock_ref(MAIN_REF)?;
            tx.set_target(
                MAIN_REF,
                commit,
                None,
                &format!("portroot: import {tag_name}"),
            )?;
        }
        tx.set_target(&tag_ref, tag, None, &format!("portroot: tag {tag_name}"))?;
        tx.commit()
    };
    refs().map_err(Error::git(format!("updating {tag_ref} and {MAIN_REF}")))
}

/// Open repository `name`, creating it (bare, HEAD on `main`) if missing. A
/// new one is made under a temporary name and renamed into place.
fn ensure_repo(store: &Store, name: &str) -> Result<Repository> {
    let path = store.repo_path(name);
    if !path.exists() {
        let dir = store.repos_dir();
        fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        let tmp = tempfile::Builder::new()
            .prefix(".new-")
            .tempdir_in(&dir)
            .map_err(Error::io("creating a directory in", &dir))?;
        Repository::init_opts(
            tmp.path(),
            RepositoryInitOptions::new().bare(true).initial_head("main"),
        )
        .map_err(Error::git(format!(
            "creating a repository in {}",
            tmp.path().display()
        )))?;
        fs::rename(tmp.path(), &path).map_err(Error::io("creating", &path))?;
        info!(repo = %path.display(), "created snapshot repository");
    }
    open_repo(store, name)
}

/// One tar entry on its way from the reader thread to the packer.
enum Item {
    File {
        raw: Vec<u8>,
        path: String,
        exec: bool,
        data: Vec<u8>,
    },
    Symlink {
        raw: Vec<u8>,
        path: String,
        target: String,
    },
    Hardlink {
        raw: Vec<u8>,
        path: String,
        target: String,
    },
}

/// An entry after a worker hashed it, and packed it unless the repository
/// already has the object.
enum Hashed {
    Blob {
        raw: Vec<u8>,
        path: String,
        mode: FileMode,
        oid: Oid,
        packed: Option<PackedObject>,
        size: u64,
        /// The content, kept only for the files the import reads itself.
        keep: Option<Vec<u8>>,
    },
    Hardlink {
        raw: Vec<u8>,
        path: String,
        target: String,
    },
}

/// The reader's end of the channel to the workers, which starts idle workers
/// when they fall behind (see [`WORKERS`]).
struct Batches {
    tx: SyncSender<Vec<Item>>,
    /// Workers waiting for a start signal.
    idle: Vec<SyncSender<()>>,
}

impl Batches {
    /// Hand `batch` to the workers; `false` if they hung up.
    fn send(&mut self, batch: Vec<Item>) -> bool {
        match self.tx.try_send(batch) {
            Ok(()) => true,
            Err(TrySendError::Full(batch)) => {
                if let Some(start) = self.idle.pop() {
                    debug!("workers fell behind, starting one more");
                    let _ = start.send(());
                }
                self.tx.send(batch).is_ok()
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// A worker: object ids and deflating, the CPU-heavy half of packing. With
/// `start`, it waits for the reader to call it in, and stops if the reader
/// ends first. Stops when either channel closes.
fn hash_and_deflate(
    rx: Arc<Mutex<Receiver<Vec<Item>>>>,
    tx: SyncSender<Vec<Hashed>>,
    repo: Option<Repository>,
    start: Option<Receiver<()>>,
) {
    if start.is_some_and(|s| s.recv().is_err()) {
        return;
    }
    let odb = repo.as_ref().and_then(|r| r.odb().ok());
    let mut deflater = Deflater::new();
    loop {
        let batch = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(batch) = batch else { return };
        let hashed: Vec<Hashed> = batch
            .into_iter()
            .map(|item| hash_one(item, odb.as_ref(), &mut deflater))
            .collect();
        if tx.send(hashed).is_err() {
            return;
        }
    }
}

/// A worker's job for one entry.
fn hash_one(item: Item, odb: Option<&git2::Odb<'_>>, deflater: &mut Deflater) -> Hashed {
    {
        let mut blob = |data: &[u8]| {
            let oid = object_id(ObjectKind::Blob, data);
            let have = odb.is_some_and(|o| o.exists(oid));
            (oid, (!have).then(|| deflater.pack(ObjectKind::Blob, data)))
        };
        match item {
            Item::File {
                raw,
                path,
                exec,
                data,
            } => {
                let (oid, packed) = blob(&data);
                let size = data.len() as u64;
                let keep = matches!(
                    path.as_str(),
                    "metadata/timestamp.x" | "metadata/timestamp.commit"
                )
                .then_some(data);
                Hashed::Blob {
                    raw,
                    path,
                    mode: if exec {
                        FileMode::Executable
                    } else {
                        FileMode::Regular
                    },
                    oid,
                    packed,
                    size,
                    keep,
                }
            }
            Item::Symlink { raw, path, target } => {
                let (oid, packed) = blob(target.as_bytes());
                Hashed::Blob {
                    raw,
                    path,
                    mode: FileMode::Symlink,
                    oid,
                    packed,
                    size: 0,
                    // The target, to resolve chains once the tree is whole.
                    keep: Some(target.into_bytes()),
                }
            }
            Item::Hardlink { raw, path, target } => Hashed::Hardlink { raw, path, target },
        }
    }
}

impl Item {
    /// Content bytes it carries.
    fn len(&self) -> usize {
        match self {
            Item::File { data, .. } => data.len(),
            _ => 0,
        }
    }
}

/// What the packer gathered.
struct Consumed {
    tree: TreeBuilder,
    bytes: u64,
    timestamp_x: Option<Vec<u8>>,
    timestamp_commit: Option<Vec<u8>>,
}

impl Consumed {
    /// What the commit message records of the snapshot.
    fn facts(&self, date: SnapshotDate) -> CommitFacts {
        CommitFacts {
            date,
            upstream: self
                .timestamp_commit
                .as_deref()
                .and_then(tag::parse_timestamp_commit),
            files: self.tree.files(),
            bytes: self.bytes,
        }
    }
}

/// The collector: pack writes (each object once), the tree, duplicate checks;
/// hardlinks are resolved at the end, since workers may reorder entries.
fn consume(rx: Receiver<Vec<Hashed>>, pack: &mut PackWriter) -> Result<Consumed> {
    let mut out = Consumed {
        tree: TreeBuilder::new(),
        bytes: 0,
        timestamp_x: None,
        timestamp_commit: None,
    };
    let mut hardlinks = Vec::new();
    for hashed in rx.into_iter().flatten() {
        match hashed {
            Hashed::Blob {
                raw,
                path,
                mode,
                oid,
                packed,
                size,
                keep,
            } => {
                if let Some(p) = &packed {
                    pack.add_packed(oid, p)?;
                }
                if mode == FileMode::Symlink {
                    let target = keep.as_deref().map(String::from_utf8_lossy);
                    out.tree
                        .insert_symlink(&raw, &path, oid, target.as_deref().unwrap_or(""))?;
                    continue;
                }
                out.tree.insert(&raw, &path, mode, oid)?;
                out.bytes += size;
                match path.as_str() {
                    "metadata/timestamp.x" => out.timestamp_x = keep,
                    "metadata/timestamp.commit" => out.timestamp_commit = keep,
                    _ => {}
                }
            }
            Hashed::Hardlink { raw, path, target } => hardlinks.push((raw, path, target)),
        }
    }
    for (raw, path, target) in hardlinks {
        let (mode, oid) = match out.tree.get(&target) {
            Some((FileMode::Symlink, _)) | None => {
                return Err(Error::entry(
                    &raw,
                    format!("hardlink to {target:?}, which is not a regular file in the snapshot"),
                ))
            }
            Some(found) => found,
        };
        out.tree.insert(&raw, &path, mode, oid)?;
    }
    Ok(out)
}

/// What the reader thread learnt about the stream itself.
struct Streamed {
    md5: Option<String>,
    compressed: u64,
    compression: Compression,
    entries: u64,
}

/// What the decoding thread learnt about the compressed stream.
struct Decoded {
    md5: Option<String>,
    compressed: u64,
    compression: Compression,
}

/// Counts and (optionally) md5-hashes the compressed bytes as they are read.
struct TallyReader {
    file: File,
    tally: Rc<RefCell<Tally>>,
}

struct Tally {
    md5: Option<Md5>,
    /// The signature check's gpgv, fed the same bytes.
    gpgv: Option<verify::GpgvInput>,
    bytes: u64,
    /// Bytes read since the decompressor last gave any output.
    quiet: u64,
    bar: Option<indicatif::ProgressBar>,
}

impl Tally {
    fn add(&mut self, buf: &[u8]) {
        if let Some(h) = &mut self.md5 {
            h.update(buf);
        }
        if let Some(g) = &mut self.gpgv {
            g.feed(buf);
        }
        self.bytes += buf.len() as u64;
        self.quiet += buf.len() as u64;
        if let Some(bar) = &self.bar {
            bar.set_position(self.bytes);
        }
    }
}

impl Read for TallyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.tally.borrow().quiet > MAX_QUIET_INPUT {
            // Endless input the decompressor takes without a byte of output,
            // such as zeros after an xz stream (read as stream padding).
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more than 64 MiB of input without any output from the decompressor",
            ));
        }
        let n = self.file.read(buf)?;
        self.tally.borrow_mut().add(&buf[..n]);
        Ok(n)
    }
}

fn progress_bar(len: u64) -> indicatif::ProgressBar {
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} importing [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    indicatif::ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr())
        .with_style(style)
}

/// Compressed bytes the decompressor may take without giving any output.
const MAX_QUIET_INPUT: u64 = 64 << 20;

/// Bytes of decompressed tar per chunk handed from the decoding thread to
/// the tar parser.
const CHUNK_BYTES: usize = 256 << 10;

/// Chunks in flight between the decoding thread and the tar parser.
const CHUNK_DEPTH: usize = 8;

/// The decoding thread: read (md5, progress) and decompress the whole file,
/// handing the decompressed bytes on in chunks, then an error if decoding
/// failed. On two cores decompression alone fills one, so it runs on its own,
/// while tar parsing and the per-entry copies and checks go with the rest.
/// Returns `None` if decoding failed (the error went down the channel) or the
/// parser hung up.
fn decode(
    file: File,
    path: &Path,
    tx: SyncSender<io::Result<Vec<u8>>>,
    spare: Receiver<Vec<u8>>,
    progress: bool,
    want_md5: bool,
    gpgv: Option<verify::GpgvInput>,
) -> Result<Option<Decoded>> {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // A second handle on the same open file (same offset), to read whatever the
    // decompressor leaves behind into the md5.
    let mut tail = file.try_clone().map_err(Error::io("opening", path))?;
    let tally = Rc::new(RefCell::new(Tally {
        md5: want_md5.then(Md5::new),
        gpgv,
        bytes: 0,
        quiet: 0,
        bar: progress.then(|| progress_bar(len)),
    }));
    let reader = TallyReader {
        file,
        tally: Rc::clone(&tally),
    };
    let (mut stream, compression) = match decompress(reader) {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Err(e));
            return Ok(None);
        }
    };
    // Read to the very end of the compressed stream: only there does the
    // decompressor check its trailer (xz's CRC, gzip's length), so a stream
    // cut after the tar's last entry is still caught.
    if !send_chunks(&mut stream, &tx, &spare, &tally) {
        return Ok(None);
    }
    drop(tx);
    drop(stream);
    let rest = read_trailer(&mut tail, path)?;
    let mut tally = tally.borrow_mut();
    tally.add(&rest);
    // The end of gpgv's input.
    tally.gpgv = None;
    if let Some(bar) = tally.bar.take() {
        bar.finish_and_clear();
    }
    Ok(Some(Decoded {
        md5: tally.md5.take().map(|h| pack::hex(&h.finalize())),
        compressed: tally.bytes,
        compression,
    }))
}

/// Hand the decompressed `stream` on in chunks, to its end: false if it
/// failed (the error went down the channel) or the parser hung up.
fn send_chunks(
    stream: &mut impl Read,
    tx: &SyncSender<io::Result<Vec<u8>>>,
    spare: &Receiver<Vec<u8>>,
    tally: &RefCell<Tally>,
) -> bool {
    loop {
        // Buffers come back from the parser once read, already initialised.
        let mut buf = spare.try_recv().unwrap_or_else(|_| vec![0; CHUNK_BYTES]);
        let mut filled = 0;
        while filled < buf.len() {
            match stream.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => {
                    filled += n;
                    tally.borrow_mut().quiet = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if filled > 0 {
                        buf.truncate(filled);
                        let _ = tx.send(Ok(buf));
                    }
                    let _ = tx.send(Err(e));
                    return false;
                }
            }
        }
        if filled == 0 {
            break;
        }
        buf.truncate(filled);
        if tx.send(Ok(buf)).is_err() {
            return false;
        }
    }
    true
}

/// What follows the compressed stream, but no more than a tar's padding:
/// endless input must end.
fn read_trailer(tail: &mut File, path: &Path) -> Result<Vec<u8>> {
    // Whatever follows the compressed stream is hashed too, but only up to the
    // same padding a tar may have: endless input must end.
    let mut rest = Vec::new();
    tail.take(MAX_TAR_PADDING + 1)
        .read_to_end(&mut rest)
        .map_err(Error::io("reading", path))?;
    if rest.len() as u64 > MAX_TAR_PADDING {
        return Err(Error::Tar {
            path: path.to_owned(),
            entries: 0,
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                "more than 1 MiB of data after the end of the compressed stream",
            ),
        });
    }
    Ok(rest)
}

/// The tar parser's side of [`decode`]: its chunks as one byte stream.
struct ChunkReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    spare: SyncSender<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    /// Bytes handed out so far.
    consumed: u64,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.chunk.len() {
            let next = match self.rx.recv() {
                Ok(chunk) => chunk?,
                // The decoder is done (or failed, and said so before).
                Err(_) => return Ok(0),
            };
            let mut done = std::mem::replace(&mut self.chunk, next);
            self.pos = 0;
            if done.capacity() >= CHUNK_BYTES {
                done.resize(CHUNK_BYTES, 0);
                let _ = self.spare.try_send(done);
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        self.consumed += n as u64;
        Ok(n)
    }
}

/// The reader thread: decompress (on a thread of its own, see [`decode`]),
/// walk the tar, check every entry, send the ones that belong in the tree.
/// Returns `None` early if the packer hung up, which it only does after an
/// error of its own.
fn read_entries(
    path: &Path,
    tx: Batches,
    progress: bool,
    want_md5: bool,
    gpgv: Option<verify::GpgvInput>,
) -> Result<Option<Streamed>> {
    let file = File::open(path).map_err(Error::io("opening", path))?;
    let (chunk_tx, chunk_rx) = sync_channel(CHUNK_DEPTH);
    let (spare_tx, spare_rx) = sync_channel(CHUNK_DEPTH);
    let stream = ChunkReader {
        rx: chunk_rx,
        spare: spare_tx,
        chunk: Vec::new(),
        pos: 0,
        consumed: 0,
    };
    let owned = path.to_owned();
    // Not a scoped thread: when the parser stops early, the decoder may sit in
    // a read of a pipe that delivers nothing more, and the import must end
    // anyway. It ends by itself at its next hand-over, on the closed channel.
    let decoder = std::thread::spawn(move || {
        decode(file, &owned, chunk_tx, spare_rx, progress, want_md5, gpgv)
    });
    let Some(entries) = parse_entries(path, stream, tx)? else {
        return Ok(None);
    };
    // The parser read the stream to its end: the decoder is done.
    let decoded = match decoder.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    let decoded = decoded?.expect(
        "invariant: the decoder reports its failures through the stream, which was read to its end",
    );
    Ok(Some(Streamed {
        md5: decoded.md5,
        compressed: decoded.compressed,
        compression: decoded.compression,
        entries,
    }))
}

/// Zero bytes accepted after the end-of-archive blocks: the padding of the
/// last record, for blocking factors up to 2048 (tar's default is 20, 10 KiB).
/// Anything longer, like endless input (`/dev/zero`), is refused.
const MAX_TAR_PADDING: u64 = 1 << 20;

/// Walk the tar in `stream`; `Some(entries)` once all of it was read, `None`
/// if the packer hung up.
fn parse_entries(path: &Path, stream: ChunkReader, mut tx: Batches) -> Result<Option<u64>> {
    let mut entries = 0u64;
    let mut archive = tar::Archive::new(stream);
    let mut splitter = PathSplitter::default();
    let mut batch = Vec::with_capacity(BATCH_ITEMS);
    let mut batch_bytes = 0;
    // Where the next header would start, after the last entry's data.
    let mut data_end = 0u64;
    for entry in archive.entries().map_err(tar_error(path, 0))? {
        if portroot_runner::interrupt::requested() {
            return Err(Error::Interrupted);
        }
        let mut entry = entry.map_err(tar_error(path, entries))?;
        entries += 1;
        data_end = entry.raw_file_position() + entry.size().div_ceil(512) * 512;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        let raw = entry.path_bytes().into_owned();
        let Some(inside) = tree_path(&mut splitter, &raw, kind)? else {
            continue;
        };
        let at = Located {
            tarball: path,
            entries,
            raw,
            path: inside,
        };
        let item = entry_item(&mut entry, kind, at, &mut splitter)?;
        batch_bytes += item.len();
        batch.push(item);
        if batch.len() >= BATCH_ITEMS || batch_bytes >= BATCH_BYTES {
            batch_bytes = 0;
            if !tx.send(std::mem::replace(
                &mut batch,
                Vec::with_capacity(BATCH_ITEMS),
            )) {
                return Ok(None);
            }
        }
    }
    if !batch.is_empty() && !tx.send(batch) {
        return Ok(None);
    }
    drop(tx);
    let stream = archive.into_inner();
    check_tar_end(path, stream, data_end, entries)?;
    Ok(Some(entries))
}

/// The error for a tar that cannot be read after `entries` entries.
fn tar_error(path: &Path, entries: u64) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Tar {
        path,
        entries,
        source: one_line(source),
    }
}

/// Where tar entry `raw` (of type `kind`) goes in the tree: `None` for what
/// the tree leaves out (the top directory, excluded paths, directories,
/// which exist through their contents), after checking it.
fn tree_path(
    splitter: &mut PathSplitter,
    raw: &[u8],
    kind: tar::EntryType,
) -> Result<Option<String>> {
    match splitter.split(raw)? {
        SnapshotPath::Excluded => Ok(None),
        SnapshotPath::Top if kind.is_dir() => Ok(None),
        SnapshotPath::Top => Err(Error::entry(
            raw,
            "a file at the top level: a snapshot has one top directory",
        )),
        SnapshotPath::Inside(p) if kind.is_dir() => {
            check_entry(raw, &p, EntryKind::Dir, None)?;
            Ok(None)
        }
        SnapshotPath::Inside(p) => Ok(Some(p)),
    }
}

/// A tar entry that belongs in the tree.
struct Located<'a> {
    /// The tarball.
    tarball: &'a Path,
    /// Entries read so far, this one included.
    entries: u64,
    /// Its path as written in the tar.
    raw: Vec<u8>,
    /// Its path in the tree.
    path: String,
}

/// The item a file, symlink or hardlink entry becomes, once checked; any
/// other entry type is refused.
fn entry_item(
    entry: &mut tar::Entry<'_, ChunkReader>,
    kind: tar::EntryType,
    at: Located<'_>,
    splitter: &mut PathSplitter,
) -> Result<Item> {
    let Located {
        tarball,
        entries,
        raw,
        path,
    } = at;
    let link_target = |entry: &tar::Entry<'_, ChunkReader>| {
        entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .unwrap_or_default()
    };
    match kind {
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            let size = entry.size();
            if size > MAX_FILE_SIZE {
                return Err(Error::entry(
                    &raw,
                    format!("{size} bytes is too large for a portage tree file"),
                ));
            }
            let exec = entry.header().mode().map_err(tar_error(tarball, entries))? & 0o100 != 0;
            let mut data = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut data)
                .map_err(tar_error(tarball, entries))?;
            check_entry(&raw, &path, EntryKind::File, Some(&data))?;
            Ok(Item::File {
                raw,
                path,
                exec,
                data,
            })
        }
        tar::EntryType::Symlink => {
            let target = link_target(entry);
            check_symlink(&raw, &path, &target)?;
            check_entry(&raw, &path, EntryKind::Symlink, None)?;
            let target =
                String::from_utf8(target).expect("invariant: check_symlink accepts only UTF-8");
            Ok(Item::Symlink { raw, path, target })
        }
        tar::EntryType::Link => {
            let target = link_target(entry);
            let target = match splitter.split(&target) {
                Ok(SnapshotPath::Inside(t)) => t,
                _ => {
                    let t = String::from_utf8_lossy(&target).into_owned();
                    return Err(Error::entry(
                        &raw,
                        format!("hardlink to {t:?}, outside the snapshot tree"),
                    ));
                }
            };
            check_entry(&raw, &path, EntryKind::Hardlink, None)?;
            Ok(Item::Hardlink { raw, path, target })
        }
        tar::EntryType::Char | tar::EntryType::Block => Err(Error::entry(
            &raw,
            "device node (not allowed in a portage snapshot)",
        )),
        tar::EntryType::Fifo => Err(Error::entry(
            &raw,
            "fifo (not allowed in a portage snapshot)",
        )),
        other => Err(Error::entry(
            &raw,
            format!("unsupported tar entry type {other:?}"),
        )),
    }
}

/// After the tar reader stopped, at the first zero block or at the end of the
/// input: check that the archive really ended there (two zero blocks, then
/// only zero padding, [`MAX_TAR_PADDING`] at most), and read the stream to its
/// end, where the decoder reports a bad trailer, if any.
fn check_tar_end(path: &Path, mut stream: ChunkReader, data_end: u64, entries: u64) -> Result<()> {
    let truncated = |problem: &str| Error::Tar {
        path: path.to_owned(),
        entries,
        source: io::Error::new(io::ErrorKind::InvalidData, problem.to_owned()),
    };
    // The reader stopped at the end of the input if it read nothing past the
    // last entry's data; else it read the first zero block.
    if stream.consumed < data_end + 512 {
        return Err(truncated("no end-of-archive blocks"));
    }
    let mut trailing = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Tar {
                    path: path.to_owned(),
                    entries,
                    source: one_line(e),
                })
            }
        };
        if let Some(at) = buf[..n].iter().position(|b| *b != 0) {
            if trailing + (at as u64) < 512 {
                return Err(truncated("only one end-of-archive block"));
            }
            return Err(truncated("data after the end of the archive"));
        }
        trailing += n as u64;
        if trailing > MAX_TAR_PADDING {
            return Err(truncated(
                "more than 1 MiB of padding after the end of the archive",
            ));
        }
    }
    if trailing < 512 {
        return Err(truncated("only one end-of-archive block"));
    }
    Ok(())
}

/// The tar reader quotes raw header bytes in some errors: keep the message to
/// one printable line of reasonable length.
fn one_line(err: io::Error) -> io::Error {
    let msg = err.to_string();
    if msg.len() <= 200 && !msg.contains(|c: char| c.is_control()) {
        return err;
    }
    let mut clean: String = msg.escape_debug().collect();
    if clean.len() > 200 {
        let cut = (0..=200)
            .rev()
            .find(|i| clean.is_char_boundary(*i))
            .unwrap_or(0);
        clean.truncate(cut);
        clean.push_str("...");
    }
    io::Error::new(err.kind(), clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(digit: char) -> Oid {
        Oid::from_str(&digit.to_string().repeat(40)).unwrap()
    }

    fn tag(name: &str, time: i64, commit: char, tree: char) -> SnapshotTag {
        SnapshotTag {
            name: name.to_owned(),
            commit: oid(commit),
            tree: oid(tree),
            time,
            files: None,
            bytes: None,
        }
    }

    const DAY: i64 = 86_400;

    fn tags() -> Vec<SnapshotTag> {
        vec![
            tag("2026-01-01", 10 * DAY, '1', 'a'),
            tag("2026-01-03", 12 * DAY, '3', 'c'),
            tag("2026-01-02", 11 * DAY, '2', 'b'),
        ]
    }

    #[test]
    fn first_snapshot_is_new() {
        assert_eq!(
            judge_tag(&[], "2026-01-01", DAY, oid('a')),
            TagJudgement::New
        );
    }

    #[test]
    fn snapshot_newer_than_every_tag_is_new() {
        let j = judge_tag(&tags(), "2026-01-04", 13 * DAY, oid('d'));
        assert_eq!(j, TagJudgement::New);
    }

    #[test]
    fn tag_with_the_same_tree_is_the_same_snapshot() {
        let j = judge_tag(&tags(), "2026-01-02", 11 * DAY, oid('b'));
        assert_eq!(j, TagJudgement::Same { commit: oid('2') });
    }

    #[test]
    fn tag_with_another_tree_conflicts() {
        let j = judge_tag(&tags(), "2026-01-03", 12 * DAY, oid('e'));
        assert_eq!(j, TagJudgement::Conflicting);
    }

    #[test]
    fn older_tag_name_with_another_tree_conflicts_rather_than_being_older() {
        let j = judge_tag(&tags(), "2026-01-01", 10 * DAY, oid('e'));
        assert_eq!(j, TagJudgement::Conflicting);
    }

    #[test]
    fn other_name_with_the_newest_timestamp_is_no_newer() {
        let j = judge_tag(&tags(), "2026-01-03T00", 12 * DAY, oid('e'));
        assert_eq!(
            j,
            TagJudgement::SameTime {
                newest: "2026-01-03".to_owned(),
                commit: oid('3')
            }
        );
    }

    #[test]
    fn snapshot_before_the_newest_tag_is_older() {
        let j = judge_tag(&tags(), "2026-01-02T12", 11 * DAY + DAY / 2, oid('e'));
        assert_eq!(
            j,
            TagJudgement::Older {
                newest: "2026-01-03".to_owned()
            }
        );
    }
}
