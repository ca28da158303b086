//! The runs of a store as `runs` lists them, and `gc`: which are live,
//! which are finished, which use a layer.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use super::record::{lock_file, read_record, JobDir, RunRecord};
use crate::cgroup::{self};
use crate::error::{io, Error, Result};

/// A run directory as `ps` and `gc` see it.
#[derive(Debug)]
pub struct RunInfo {
    /// Directory name (`.new-*` for one that never got renamed).
    pub id: String,
    /// Its path.
    pub path: PathBuf,
    /// Whether a runner holds its lock.
    pub live: bool,
    /// `run.json`, if readable.
    pub record: Option<RunRecord>,
}

/// Every run directory under `runs_dir` (none if it does not exist), by id.
pub fn list_runs(runs_dir: &Path) -> Result<Vec<RunInfo>> {
    let entries = match fs::read_dir(runs_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("listing", runs_dir)(e)),
    };
    let mut runs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io("listing", runs_dir))?;
        if !entry.file_type().map_err(io("listing", runs_dir))?.is_dir() {
            continue;
        }
        let path = entry.path();
        let live = is_live(&path.join("lock"))?;
        runs.push(RunInfo {
            id: entry.file_name().to_string_lossy().into_owned(),
            record: read_record(&path).ok(),
            path,
            live,
        });
    }
    runs.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(runs)
}

pub(super) fn is_live(lock: &Path) -> Result<bool> {
    let file = match File::open(lock) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io("opening", lock)(e)),
    };
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_) => Ok(false),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(true),
        Err((_, errno)) => Err(Error::Sys {
            what: "locking",
            path: lock.to_owned(),
            source: errno,
        }),
    }
}

/// What `gc` did.
#[derive(Debug, Default)]
pub struct GcReport {
    /// Run directories removed.
    pub removed: Vec<String>,
    /// Live runs left alone.
    pub live: usize,
    /// Finished runs kept (logs, `--keep` chroots); `gc --all` removes them.
    pub kept: usize,
}

/// Remove what dead runs left: every run whose runner is gone without
/// finishing (killed), and with `all` also finished runs (logs, kept chroots).
pub fn gc(runs_dir: &Path, all: bool) -> Result<GcReport> {
    let mut report = GcReport::default();
    for run in list_runs(runs_dir)? {
        if run.live {
            report.live += 1;
            continue;
        }
        // A run being created has its directory a moment before its lock:
        // leave fresh half-made ones to their creator.
        if run.id.starts_with(".new-") && is_recent(&run.path) {
            report.live += 1;
            continue;
        }
        let finished = run.record.as_ref().is_some_and(|r| r.outcomes.is_some());
        if finished && !all {
            report.kept += 1;
            continue;
        }
        // Take the lock ourselves so a runner starting `shell --run` on it
        // meanwhile is not pulled from under its feet.
        let _lock = match lock_file(&run.path.join("lock"), true) {
            Ok(l) => l,
            Err(Error::Invalid(_)) => {
                report.live += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Some(record) = &run.record {
            cgroup::remove_run_groups(&record.cgroups)?;
        }
        fs::remove_dir_all(&run.path).map_err(io("removing", &run.path))?;
        tracing::debug!(run = %run.id, "removed dead run");
        report.removed.push(run.id);
    }
    Ok(report)
}

/// The runs that use `lower` (a lower directory) now: live ones, and finished
/// ones that kept a chroot over it (`--keep`), by id.
pub fn runs_using(runs_dir: &Path, lower: &Path) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for run in list_runs(runs_dir)? {
        let Some(record) = &run.record else { continue };
        if !record.layers.iter().any(|l| l == lower) {
            continue;
        }
        let kept = record
            .jobs
            .iter()
            .any(|j| JobDir(run.path.join(j)).upper().is_dir());
        if run.live || kept {
            ids.push(run.id);
        }
    }
    Ok(ids)
}

/// Whether `path` changed in the last minute.
pub(super) fn is_recent(path: &Path) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < Duration::from_secs(60))
}
