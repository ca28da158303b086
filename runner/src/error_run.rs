//! Errors of the chroot runner (plan, sandbox, pool, run directories).
//!
//! TODO: fold into the crate's single `error.rs` once the stage store lands
//! (see issue 4); kept apart so both halves of the crate merge cleanly.

use std::path::PathBuf;

/// Everything that can go wrong setting up or running chroots.
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
        /// What we were doing, e.g. "mounting overlay on".
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: nix::Error,
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
    /// A sandbox spec or run record could not be read or written.
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
    /// Input the caller must fix: a bad job name, a stage without a shell, ...
    #[error("{0}")]
    Invalid(String),
}

/// Result with the runner's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for [`Error::Io`].
pub(crate) fn io(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}

/// Shorthand for [`Error::Sys`].
pub(crate) fn sys(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(nix::Error) -> Error {
    let path = path.into();
    move |source| Error::Sys { what, path, source }
}
