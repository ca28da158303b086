//! The runner crate's one error type.
//!
//! Every variant that wraps an io or nix error names the path it concerns, and
//! messages are lowercase without a trailing period and never repeat their
//! source's text, so `{:#}` in the binary reads as one clean line.

use std::path::PathBuf;

/// Everything that can go wrong in the stage store and the chroot runner.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem call on `path` failed.
    #[error("{what} {path}")]
    Io {
        /// What we were doing, e.g. "creating".
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A system call on `path` failed.
    #[error("{what} {path}")]
    Sys {
        /// What we were doing, e.g. "creating device node".
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// A JSON record (`stage.json`, ...) could not be read or written.
    #[error("{what} {path}")]
    Json {
        /// What we were doing.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The tarball is not a readable archive: not tar, a corrupt or truncated
    /// compressed stream, a bad header checksum, ...
    #[error("reading tarball {path}")]
    Archive {
        /// The tarball.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The (decompressed) tarball does not start with a tar header.
    #[error("{path} is not a tar archive")]
    NotTar {
        /// The tarball.
        path: PathBuf,
    },
    /// A tarball's sha256 is not the one asked for.
    #[error("{path}: sha256 is {got}, expected {want}; nothing added")]
    DigestMismatch {
        /// The tarball.
        path: PathBuf,
        /// Its digest.
        got: String,
        /// The digest asked for.
        want: String,
    },
    /// A signal asked the work to stop ([`crate::interrupt`]); the handler
    /// removes what was written and reports the signal itself.
    #[error("interrupted")]
    Interrupted,
    /// The tarball ends early: inside an entry's data, or without the
    /// end-of-archive blocks.
    #[error("tarball {path} is truncated ({detail})")]
    Truncated {
        /// The tarball.
        path: PathBuf,
        /// Where it stops.
        detail: String,
    },
    /// One entry of the tarball is refused: it would land outside the root, or
    /// it cannot be unpacked faithfully.
    #[error("refusing tar entry {entry} in {tarball}: {reason}")]
    Entry {
        /// The tarball.
        tarball: PathBuf,
        /// The entry's name as written in the archive.
        entry: String,
        /// Why it is refused.
        reason: String,
    },
    /// No stage has this name, digest or digest prefix.
    #[error("no stage {0} (see `portroot stage list`)")]
    UnknownStage(String),
    /// A digest prefix matches more than one stage.
    #[error("stage digest prefix {prefix} is ambiguous ({count} stages match)")]
    AmbiguousStage {
        /// The prefix given.
        prefix: String,
        /// How many stages it matches.
        count: usize,
    },
    /// The stage is leased by a run (for removal) or being removed (for a lease).
    #[error("stage {stage} is busy: {why}")]
    StageBusy {
        /// The stage as the user named it.
        stage: String,
        /// "in use by a run" or "being removed".
        why: &'static str,
    },
    /// No layer has this name.
    #[error("no layer {0} (see `portroot layer list`)")]
    UnknownLayer(String),
    /// The layer cannot be removed (or used) now.
    #[error("layer {layer} is busy: {why}")]
    LayerBusy {
        /// The layer's name.
        layer: String,
        /// Why: who uses it.
        why: String,
    },
    /// A layer is used over another stage or other parents than it was built over.
    #[error("layer {layer} cannot be used here: {why}")]
    LayerChain {
        /// The layer's name.
        layer: String,
        /// What differs.
        why: String,
    },
    /// A process-wide system call (unshare, fork, sethostname) failed.
    #[error("{what}")]
    Proc {
        /// What we were doing.
        what: &'static str,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// A job file line is malformed.
    #[error("{path}:{line}: {reason}")]
    JobFile {
        /// The job file (`-` for standard input).
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Input the caller must fix: a bad stage name, a stage without a shell, ...
    #[error("{0}")]
    Invalid(String),
}

/// Result with the runner's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for [`Error::Io`]: `.map_err(io("creating", &path))`.
pub(crate) fn io(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}

/// Shorthand for [`Error::Sys`]: `.map_err(sys("creating device node", &path))`.
pub(crate) fn sys(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(nix::Error) -> Error {
    let path = path.into();
    move |source| Error::Sys { what, path, source }
}
