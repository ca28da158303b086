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

mod decode;
pub mod diff;
mod entries;
pub mod error;
pub mod pack;
pub mod remote;
pub mod sync;
pub mod tag;
pub mod tree;
pub mod verify;
mod workers;
mod write;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use git2::{Oid, Repository, RepositoryInitOptions};
use tracing::{debug, info, info_span};

pub use self::entries::MAX_FILE_SIZE;
use self::entries::{read_entries, Streamed};
pub use self::error::{Error, Result};
use self::pack::{object_id, FinishedPack, ObjectKind, PackWriter};
use self::tag::{SnapshotDate, SnapshotTag};
use self::tree::TreeBuilder;
use self::workers::{consume, hash_and_deflate, Batches, Consumed, Hashed, Item};
use self::write::write_snapshot;
use crate::store::Store;

/// Batches in flight on each channel. Entries travel in batches of up to
/// [`entries::BATCH_ITEMS`] entries or [`entries::BATCH_BYTES`] of content: handing over 100k
/// single entries cost ~20% of the import in futex wake-ups and context
/// switches. In flight at most: (2 x depth + workers) x 1 MiB.
const CHANNEL_DEPTH: usize = 8;

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
