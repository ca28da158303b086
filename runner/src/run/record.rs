//! `run.json`, what a run records of itself for `shell --run`, `runs` and
//! `gc`; run ids; the lock a live run holds.

use crate::digest::StageDigest;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::binhost::PackageDiff;
use crate::caches::Refused;
use crate::cgroup::Limits;
use crate::conf::ChrootConf;
use crate::error::{io, Error, Result};
use crate::job::JobOutcome;
use crate::plan::{Bind, ChrootLayout, TmpfsMount};
use crate::sandbox::{Command, Network, SandboxSpec};

/// One tree mounted for the run: a git repository at a ref.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeRecord {
    /// Repository name (`gentoo` for the main tree).
    pub name: String,
    /// The bare git repository.
    pub git_dir: PathBuf,
    /// Tag or ref as the user named it.
    pub reference: String,
    /// The commit `reference` named when the run started: the mount serves
    /// this commit, so a tag moved meanwhile changes nothing. Absent in
    /// records written before it.
    #[serde(default)]
    pub commit: Option<String>,
    /// Where it is mounted on the host (inside the run's namespace).
    pub mountpoint: PathBuf,
    /// Where jobs see it.
    pub target: PathBuf,
}

/// What `run.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run id (the directory name).
    pub id: String,
    /// The runner's pid.
    pub pid: u32,
    /// The command line.
    pub args: Vec<String>,
    /// Start, seconds since the epoch.
    pub start: u64,
    /// Stage name as given.
    pub stage: String,
    /// The stage's digest, which `shell --run` leases again.
    pub stage_digest: StageDigest,
    /// The stage layers, top first (the last is the stage rootfs).
    pub layers: Vec<PathBuf>,
    /// The named layers (`--layer`) in `layers`, bottom first, which
    /// `shell --run` leases again.
    #[serde(default)]
    pub layer_names: Vec<String>,
    /// The trees every job sees.
    pub trees: Vec<TreeRecord>,
    /// Read-write caches bound into every job (DISTDIR, PKGDIR).
    pub caches: Vec<Bind>,
    /// Configuration written into every job.
    pub conf: ChrootConf,
    /// Network choice.
    pub network: Network,
    /// `--keep`: chroots stay for `portroot shell --run`.
    pub keep: bool,
    /// The job names, in order.
    pub jobs: Vec<String>,
    /// What each job may use.
    #[serde(default)]
    pub limits: Limits,
    /// tmpfs mounts in every job (`--tmpfs`).
    #[serde(default)]
    pub tmpfs: Vec<TmpfsMount>,
    /// The run's cgroup, `portroot/<id>`, in every hierarchy, and last the
    /// leaf the runner moved itself into on cgroup v2, if it did: what `gc`
    /// removes if the runner was killed.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// Set when the run ended (not when it was killed).
    pub outcomes: Option<Vec<JobOutcome>>,
    /// What the run left in PKGDIR that was refused and moved out of it
    /// (see `caches::check_pkgdir`), when the run ended.
    #[serde(default)]
    pub refused: Vec<Refused>,
    /// The binhost generation the run wrote into (`--binhost`), if any.
    #[serde(default)]
    pub binhost: Option<RunGeneration>,
}

/// A run's binhost generation: where, from what, and what it built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunGeneration {
    /// The binhost directory.
    pub root: PathBuf,
    /// The generation (the run's id), `generations/<id>` under `root`.
    pub generation: String,
    /// The generation it was linked from, if any.
    pub parent: Option<String>,
    /// What the run changed in it against its parent: set when the run
    /// ended.
    #[serde(default)]
    pub built: Option<PackageDiff>,
    /// How many packages the generation serves, when the run ended.
    #[serde(default)]
    pub packages: Option<usize>,
}

impl RunRecord {
    /// Name each tree's mount point in the run directory `run_path`:
    /// `repos/NAME`.
    pub fn place_trees(&mut self, run_path: &Path) {
        for t in &mut self.trees {
            t.mountpoint = run_path.join("repos").join(&t.name);
        }
    }

    /// The host directory bound as PKGDIR (the binhost), if any.
    pub fn pkgdir(&self) -> Option<&Path> {
        self.caches
            .iter()
            .find(|b| b.target == Path::new(crate::conf::PKGDIR))
            .map(|b| b.source.as_path())
    }

    /// How the run ended, as `runs` and the report say it: `interrupted`
    /// (a job was cancelled), `ok` (every job succeeded and nothing was
    /// refused from the binhost, so the run exited 0), `failed`; `None` while
    /// it has no outcomes (running, or its runner was killed).
    pub fn ended(&self) -> Option<&'static str> {
        let o = self.outcomes.as_ref()?;
        Some(
            if o.iter()
                .any(|o| o.status == crate::job::JobStatus::Cancelled)
            {
                "interrupted"
            } else if o.iter().all(|o| o.status.success()) && self.refused.is_empty() {
                "ok"
            } else {
                "failed"
            },
        )
    }
}

impl RunRecord {
    /// The sandbox spec of `job` in this run.
    pub fn spec(
        &self,
        dir: &JobDir,
        hostname: &str,
        command: Command,
        term: Option<String>,
    ) -> SandboxSpec {
        let mut binds: Vec<Bind> = self
            .trees
            .iter()
            .map(|t| Bind {
                source: t.mountpoint.clone(),
                target: t.target.clone(),
                writable: false,
            })
            .collect();
        binds.extend(self.caches.iter().cloned());
        SandboxSpec {
            hostname: hostname.to_owned(),
            layout: ChrootLayout {
                layers: self.layers.clone(),
                upper: dir.upper(),
                work: dir.work(),
                root: dir.root(),
                binds,
                tmpfs: self.tmpfs.clone(),
            },
            conf: self.conf.clone(),
            network: self.network,
            command,
            term,
            cgroup: None,
        }
    }
}

/// A fresh run id: `YYYYMMDD-HHMMSS-xxxx` (UTC, 4 random hex digits).
pub fn new_run_id(now: SystemTime) -> String {
    use std::hash::{BuildHasher, Hasher};
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        now.duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{}-{:04x}", utc_stamp(secs), h.finish() & 0xffff)
}

/// `YYYYMMDD-HHMMSS` for `secs` since the epoch (UTC).
pub fn utc_stamp(secs: u64) -> String {
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .format("%Y%m%d-%H%M%S")
        .to_string()
}

pub(super) fn lock_file(path: &Path, create: bool) -> Result<Flock<File>> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
        .map_err(io("opening", path))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            Error::Invalid(format!(
                "run {} is still live",
                path.parent().unwrap_or(path).display()
            ))
        } else {
            Error::Sys {
                what: "locking",
                path: path.to_owned(),
                source: errno,
            }
        }
    })
}

pub(super) fn write_record(dir: &Path, record: &RunRecord) -> Result<()> {
    let path = dir.join("run.json");
    let tmp = dir.join(".run.json.tmp");
    let text = serde_json::to_vec_pretty(record).map_err(|source| Error::Json {
        what: "encoding",
        path: path.clone(),
        source,
    })?;
    fs::write(&tmp, text).map_err(io("writing", &tmp))?;
    fs::rename(&tmp, &path).map_err(io("renaming into place", &path))
}

/// Read `run.json` of the run in `dir`.
pub fn read_record(dir: &Path) -> Result<RunRecord> {
    let path = dir.join("run.json");
    let text = fs::read(&path).map_err(io("reading", &path))?;
    serde_json::from_slice(&text).map_err(|source| Error::Json {
        what: "parsing",
        path,
        source,
    })
}

/// The paths of one job inside its run.
#[derive(Debug, Clone)]
pub struct JobDir(pub PathBuf);

impl JobDir {
    /// Overlay upper directory.
    pub fn upper(&self) -> PathBuf {
        self.0.join("upper")
    }
    /// Overlay work directory.
    pub fn work(&self) -> PathBuf {
        self.0.join("work")
    }
    /// The chroot's mount point.
    pub fn root(&self) -> PathBuf {
        self.0.join("root")
    }
    /// Stdout and stderr of the job.
    pub fn log(&self) -> PathBuf {
        self.0.join("log")
    }
    /// One line: how the job ended.
    pub fn status(&self) -> PathBuf {
        self.0.join("status")
    }
    /// The helper's input.
    pub fn spec(&self) -> PathBuf {
        self.0.join("spec.json")
    }
}
