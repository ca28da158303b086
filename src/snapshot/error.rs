//! The snapshot importer's one error type. Every variant says what went wrong
//! and where (which file, which tar entry, which tag), so that `main` can print
//! the chain on one line.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong importing, listing or comparing snapshots.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system operation on `path` failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done ("reading", "creating", ...).
        action: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// A signal asked the import to stop
    /// ([`portroot_runner::interrupt`]); the handler removes the scratch
    /// and reports the signal itself.
    #[error("interrupted")]
    Interrupted,
    /// The compressed stream or the tar inside it is corrupt, truncated or not a tar.
    #[error("reading the tar stream of {path} (after {entries} entries): corrupt, truncated or not a tar")]
    Tar {
        /// The tarball.
        path: PathBuf,
        /// How many entries were read before the failure.
        entries: u64,
        /// The decompressor's or tar reader's reason.
        #[source]
        source: io::Error,
    },
    /// A tar entry that has no place in a portage snapshot.
    #[error("entry \"{entry}\": {problem}")]
    BadEntry {
        /// The entry's path as written in the tarball, escaped: control
        /// characters and quotes as in Rust strings, bytes that are not UTF-8
        /// as `\xNN`.
        entry: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The tarball has no files at all.
    #[error("{path} contains no files")]
    Empty {
        /// The tarball.
        path: PathBuf,
    },
    /// There is no `metadata/timestamp.x` to name the snapshot by.
    #[error("{path} has no metadata/timestamp.x to date the snapshot (give --date YYYY-MM-DD)")]
    NoTimestamp {
        /// The tarball.
        path: PathBuf,
    },
    /// `metadata/timestamp.x` does not start with a unix time.
    #[error("metadata/timestamp.x does not start with a unix time: {content:?}")]
    BadTimestamp {
        /// The first line of the file.
        content: String,
    },
    /// The snapshot's timestamp is before any portage snapshot, or too far
    /// ahead for git to record.
    #[error("snapshot timestamp {timestamp} ({when}) is {problem}")]
    BadTime {
        /// The unix time, from `metadata/timestamp.x` or `--date`.
        timestamp: i64,
        /// It as a UTC date, or why it is none.
        when: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The snapshot's timestamp is ahead of this machine's clock.
    #[error("snapshot timestamp {timestamp} ({when}) is more than a day past this machine's clock ({now}); use --allow-future if the clock is behind")]
    Future {
        /// The unix time, from `metadata/timestamp.x` or `--date`.
        timestamp: i64,
        /// It as a UTC date.
        when: String,
        /// The clock, as a UTC date.
        now: String,
    },
    /// A date given on the command line is not `YYYY-MM-DD`.
    #[error("invalid date {0:?}: expected YYYY-MM-DD")]
    BadDate(String),
    /// The md5 sum file cannot be used.
    #[error("md5 sum file {path}: {problem}")]
    Md5File {
        /// The `.md5sum` file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The tarball's md5 does not match the expected one.
    #[error("md5 mismatch for {path}: expected {expected}, got {actual}")]
    Md5Mismatch {
        /// The tarball.
        path: PathBuf,
        /// From the `.md5sum` file.
        expected: String,
        /// Of the bytes read.
        actual: String,
    },
    /// The detached signature is missing or does not verify.
    #[error("signature check of {path} failed: {reason}")]
    Signature {
        /// The tarball.
        path: PathBuf,
        /// gpgv's verdict, or what is missing.
        reason: String,
    },
    /// The snapshot is older than the newest imported one.
    #[error("snapshot {date} is older than the newest imported snapshot {newest} (use --allow-older to import it anyway)")]
    Older {
        /// The snapshot being imported.
        date: String,
        /// The newest tag in the repository.
        newest: String,
    },
    /// The tag exists and points at a different tree.
    #[error("tag {tag} already exists with a different tree (use --force to replace it)")]
    TagExists {
        /// The tag name.
        tag: String,
    },
    /// Another import holds the repository's lock.
    #[error("another import into {repo} is running (lock {lock})")]
    Locked {
        /// The repository name.
        repo: String,
        /// The lock file.
        lock: PathBuf,
    },
    /// The repository does not exist.
    #[error("no snapshot repository at {path} (import a snapshot first)")]
    NoRepo {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A tag asked for does not exist.
    #[error("no snapshot tag {tag} in {repo}")]
    UnknownTag {
        /// The tag name asked for.
        tag: String,
        /// The repository name.
        repo: String,
    },
    /// A libgit2 operation failed.
    #[error("{what}")]
    Git {
        /// What was being done.
        what: String,
        /// libgit2's reason.
        #[source]
        source: git2::Error,
    },
    /// A mirror given to `snapshot sync` is not a URL or path it can use.
    #[error("mirror {mirror:?}: {problem}")]
    BadMirror {
        /// The mirror as given.
        mirror: String,
        /// What is wrong with it.
        problem: String,
    },
    /// No mirror has a snapshot for any date of the walk.
    #[error("no snapshot dated {newest} back to {oldest} on any of {mirrors} mirror(s)")]
    NoSnapshot {
        /// The first date of the walk (the mirrors' file date).
        newest: String,
        /// The last date of the walk.
        oldest: String,
        /// How many mirrors were asked.
        mirrors: usize,
    },
    /// Every mirror that has the snapshot failed to serve a verified copy.
    #[error("no mirror served a verified {file} (last: {last})")]
    NoGoodMirror {
        /// The snapshot file name.
        file: String,
        /// The last mirror's failure.
        last: String,
    },
    /// Every mirror refused or timed out.
    #[error("no mirror reachable (last: {last})")]
    Unreachable {
        /// The last mirror's failure.
        last: String,
    },
    /// A git remote cannot take or give the snapshots as asked.
    #[error("remote {remote}: {problem}")]
    Remote {
        /// The remote as given.
        remote: String,
        /// What is wrong.
        problem: String,
    },
}

/// Results of the snapshot code.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `action` on `path`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }

    /// An [`Error::Git`] saying what was being done.
    pub(crate) fn git(what: impl Into<String>) -> impl FnOnce(git2::Error) -> Error {
        let what = what.into();
        move |source| Error::Git { what, source }
    }

    /// An [`Error::BadEntry`] for the raw entry path `entry`.
    pub(crate) fn entry(entry: &[u8], problem: impl Into<String>) -> Error {
        // A hostile entry path may be megabytes long: keep its two ends.
        const KEEP: usize = 120;
        let shown = |bytes: &[u8]| match std::str::from_utf8(bytes) {
            Ok(text) => text.escape_debug().to_string(),
            Err(_) => bytes.escape_ascii().to_string(),
        };
        let entry = if entry.len() <= 3 * KEEP {
            shown(entry)
        } else {
            let head = entry.len().min(KEEP);
            let tail = entry.len() - KEEP;
            format!(
                "{}...({} bytes)...{}",
                shown(&entry[..head]),
                entry.len(),
                shown(&entry[tail..])
            )
        };
        Error::BadEntry {
            entry,
            problem: problem.into(),
        }
    }
}
