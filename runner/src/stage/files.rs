//! The stage store's files: `stage.json` records, digests of tarballs,
//! locks on stage directories and the digest-cache keys.

use crate::digest::StageDigest;
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::names::is_digest;
use crate::error::{io, Error, Result};

/// `stage.json`: what the store knows about a stage besides its names.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) digest: StageDigest,
    pub(super) source: String,
    pub(super) compression: String,
    pub(super) tarball_bytes: u64,
    pub(super) files: u64,
    pub(super) bytes: u64,
    pub(super) added: u64,
}

/// The digest a `../<digest>` symlink points at.
pub(super) fn link_digest(link: &Path) -> Option<String> {
    let target = fs::read_link(link).ok()?;
    let digest = target.file_name()?.to_string_lossy().into_owned();
    is_digest(&digest).then_some(digest)
}

/// Hex sha256 of the file at `path`, reporting bytes read to `progress`.
pub(super) fn hash_file(path: &Path, progress: &dyn Fn(u64)) -> Result<String> {
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
pub(super) fn lock_dir(path: &Path) -> Result<Flock<File>> {
    let dir = File::open(path).map_err(io("opening", path))?;
    Flock::lock(dir, FlockArg::LockExclusive).map_err(|(_, source)| Error::Sys {
        what: "locking",
        path: path.to_owned(),
        source,
    })
}

/// Lock directory `path` exclusively if no one else holds it.
pub(super) fn try_lock_dir(path: &Path) -> Result<Option<Flock<File>>> {
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

pub(super) fn write_record(path: &Path, record: &Record) -> Result<()> {
    let json = serde_json::to_vec_pretty(record).map_err(|source| Error::Json {
        what: "serialising",
        path: path.to_owned(),
        source,
    })?;
    fs::write(path, json).map_err(io("writing", path))
}

/// The identity of a file for the digest cache: device, inode, size, mtime and
/// ctime (which no one can set back), so any change to the file means a re-hash.
pub(super) fn file_key(meta: &fs::Metadata) -> String {
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

pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A suffix unique within this host for temporary names: pid and a counter.
pub(super) fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
