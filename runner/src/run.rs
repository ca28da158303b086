//! Run directories and the per-job driver.
//!
//! A run lives in `runs/<run-id>/` (`run-id` like `20261124-123456-ab12`):
//!
//! ```text
//! run.json        who started it (pid, args, start), what it runs, and at the end
//!                 how every job went
//! lock            flock'ed exclusively by the live runner: `ps` and `gc` tell live
//!                 runs from dead ones by trying to take it
//! repos/<name>/   mount points of the run's trees (inside its mount namespace)
//! <job>/          upper/ work/ root/ spec.json log status
//! ```
//!
//! Each job also has a cgroup, `portroot/<run-id>/<job>` under the runner's
//! own (`cgroup.rs`), named in `run.json` so `gc` removes it after a SIGKILL.
//!
//! The directory is built as `runs/.new-<id>` with its lock already held, then
//! renamed into place, so `gc` never sees a half-made run without a live owner.
//! After the run, each job keeps only `log` and `status` unless `--keep`.

mod listing;
mod record;

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::fcntl::Flock;

pub use self::listing::{gc, list_runs, runs_using, GcReport, RunInfo};
use self::record::{lock_file, write_record};
pub use self::record::{
    new_run_id, read_record, utc_stamp, JobDir, RunGeneration, RunRecord, TreeRecord,
};
use crate::cgroup::{self, RunCgroup};
use crate::error::{io, Error, Result};
use crate::job::{Job, JobOutcome, JobStatus};
use crate::sandbox::{Command, SETUP_FAILED};

/// A live run directory, locked for as long as this value lives.
#[derive(Debug)]
pub struct RunDir {
    /// The run id.
    pub id: String,
    /// `runs/<id>`.
    pub path: PathBuf,
    _lock: Flock<File>,
}

impl RunDir {
    /// Create `runs/<id>/` with its lock held and `run.json` written.
    pub fn create(runs_dir: &Path, record: &RunRecord) -> Result<RunDir> {
        fs::create_dir_all(runs_dir).map_err(io("creating", runs_dir))?;
        let tmp = runs_dir.join(format!(".new-{}", record.id));
        fs::create_dir(&tmp).map_err(io("creating", &tmp))?;
        let built = (|| {
            let lock = lock_file(&tmp.join("lock"), true)?;
            write_record(&tmp, record)?;
            Ok(lock)
        })();
        let lock = match built {
            Ok(lock) => lock,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let path = runs_dir.join(&record.id);
        fs::rename(&tmp, &path).map_err(io("renaming into place", &path))?;
        Ok(RunDir {
            id: record.id.clone(),
            path,
            _lock: lock,
        })
    }

    /// Re-lock an existing run (for `shell --run`); fails if its runner lives.
    pub fn reopen(runs_dir: &Path, id: &str) -> Result<(RunDir, RunRecord)> {
        let path = runs_dir.join(id);
        if !path.join("run.json").is_file() {
            return Err(Error::Invalid(format!(
                "no run {id} in {}",
                runs_dir.display()
            )));
        }
        let lock = lock_file(&path.join("lock"), false)?;
        let record = read_record(&path)?;
        Ok((
            RunDir {
                id: id.to_owned(),
                path,
                _lock: lock,
            },
            record,
        ))
    }

    /// The directory of job `name`.
    pub fn job(&self, name: &str) -> JobDir {
        JobDir(self.path.join(name))
    }

    /// Rewrite `run.json`.
    pub fn save(&self, record: &RunRecord) -> Result<()> {
        write_record(&self.path, record)
    }
}

/// Pids of the helpers currently running, so a signal can kill them all.
#[derive(Debug, Default)]
pub struct Children(Mutex<HashSet<u32>>);

impl Children {
    /// SIGKILL every running helper (their namespaces and jobs die with them).
    pub fn kill_all(&self) {
        let pids: Vec<u32> = match self.0.lock() {
            Ok(set) => set.iter().copied().collect(),
            Err(p) => p.into_inner().iter().copied().collect(),
        };
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    fn insert(&self, pid: u32) {
        if let Ok(mut set) = self.0.lock() {
            set.insert(pid);
        }
    }
    fn remove(&self, pid: u32) {
        if let Ok(mut set) = self.0.lock() {
            set.remove(&pid);
        }
    }
}

/// How to start the sandbox helper: the program and the arguments before the
/// spec path (the binary passes `/proc/self/exe internal sandbox`).
#[derive(Debug, Clone)]
pub struct Helper {
    /// Program to run.
    pub program: PathBuf,
    /// Arguments before the spec path.
    pub args: Vec<String>,
}

impl Helper {
    /// A `std::process::Command` for `spec`, dying with the calling thread.
    pub fn command(&self, spec: &Path) -> std::process::Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(&self.args).arg(spec);
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe calls (prctl, sigprocmask); it allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The runner blocks SIGINT/SIGTERM to handle them on one
                // thread; the helper must start with a clean mask.
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
        cmd
    }
}

/// Set up, run and record one job of `record`: its directory, its cgroup
/// (in `cgroups`, if any), its spec, the helper (output to the log), and the
/// status file. Never fails: problems become the outcome's status.
pub fn execute_job(
    run: &RunDir,
    record: &RunRecord,
    helper: &Helper,
    children: &Children,
    cgroups: Option<&RunCgroup>,
    job: &Job,
    term: Option<String>,
) -> JobOutcome {
    let _span = tracing::info_span!("job", id = %job.name).entered();
    let dir = run.job(&job.name);
    let start = Instant::now();
    tracing::debug!("starting");
    let mut usage = cgroup::Usage::default();
    let status = match cgroups.map(|c| c.create_job(&job.name)).transpose() {
        Err(e) => JobStatus::Error(e.to_string()),
        Ok(group) => {
            let spec = group.as_ref().map(|g| g.spec.clone());
            let spawned = spawn_job(&dir, record, helper, children, job, term, spec);
            if let Some(group) = group {
                let (used, err) = group.finish();
                usage = used;
                if let Some(e) = err {
                    tracing::warn!(error = %e, "cleaning up the job's cgroup");
                }
            }
            match spawned {
                Ok(code) if code == SETUP_FAILED => JobStatus::SetupFailed,
                Ok(code) if code != 0 && usage.oom_kills > 0 => JobStatus::Oom,
                Ok(code) => JobStatus::Exited(code),
                Err(e) => JobStatus::Error(e.to_string()),
            }
        }
    };
    let duration = start.elapsed();
    tracing::debug!(%status, secs = duration.as_secs_f64(), "finished");
    let outcome = JobOutcome {
        name: job.name.clone(),
        status,
        duration,
        log: dir.log(),
        usage,
    };
    let _ = fs::write(dir.status(), outcome.status_record());
    outcome
}

fn spawn_job(
    dir: &JobDir,
    record: &RunRecord,
    helper: &Helper,
    children: &Children,
    job: &Job,
    term: Option<String>,
    cgroup: Option<cgroup::CgroupSpec>,
) -> Result<i32> {
    for d in [dir.0.clone(), dir.upper(), dir.work(), dir.root()] {
        fs::create_dir_all(&d).map_err(io("creating", &d))?;
    }
    let mut spec = record.spec(dir, &job.name, Command::Script(job.script.clone()), term);
    spec.cgroup = cgroup;
    spec.save(&dir.spec())?;
    let log = File::create(dir.log()).map_err(io("creating", dir.log()))?;
    let log2 = log.try_clone().map_err(io("duplicating", dir.log()))?;
    let mut child = helper
        .command(&dir.spec())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(io("starting sandbox helper", &helper.program))?;
    children.insert(child.id());
    let waited = child.wait();
    children.remove(child.id());
    let status = waited.map_err(io("waiting for sandbox helper", &helper.program))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(SETUP_FAILED))
}

/// Remove a finished job's chroot (upper, work, root), keeping log and status.
pub fn remove_chroot(dir: &JobDir) -> Result<()> {
    remove_chroots(std::slice::from_ref(dir), &[])
}

/// How many threads remove chroots at once.
const REMOVERS: usize = 8;

/// Remove the chroots of finished jobs `dirs` (upper, work, root; log and
/// status stay) and the directories `also`. Freeing a directory's block is
/// a synchronous discard on a filesystem mounted with `-o discard` (a
/// cloud VM's ext4, say): removing one entry after another waited for each
/// (a job's chroot took 5 to 40 ms on such a machine), while several
/// threads overlap the waits. So the top-level entries of every chroot
/// directory go in parallel, then the directories themselves.
pub fn remove_chroots(dirs: &[JobDir], also: &[PathBuf]) -> Result<()> {
    let roots: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|d| [d.upper(), d.work(), d.root()])
        .chain(also.iter().cloned())
        .collect();
    let children: Vec<PathBuf> = roots
        .iter()
        .filter_map(|r| fs::read_dir(r).ok())
        .flat_map(|rd| rd.flatten().map(|e| e.path()))
        .collect();
    remove_all_parallel(children)?;
    remove_all_parallel(roots)?;
    for d in dirs {
        let _ = fs::remove_file(d.spec());
    }
    Ok(())
}

/// `remove_dir_all` (or `remove_file`) each of `paths`, [`REMOVERS`] at a
/// time; a path already gone is fine. The first error wins.
fn remove_all_parallel(paths: Vec<PathBuf>) -> Result<()> {
    let queue = Mutex::new(paths);
    let next = || queue.lock().map_or(None, |mut q| q.pop());
    let remove = |p: &Path| -> Result<()> {
        let removed = match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(p),
            Ok(_) => fs::remove_file(p),
            Err(e) => Err(e),
        };
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", p)(e)),
            _ => Ok(()),
        }
    };
    let threads = queue.lock().map_or(1, |q| q.len()).clamp(1, REMOVERS);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut first = None;
                    while let Some(p) = next() {
                        if let Err(e) = remove(&p) {
                            first.get_or_insert(e);
                        }
                    }
                    first
                })
            })
            .collect();
        let mut first = None;
        for w in workers {
            if let Ok(Some(e)) = w.join() {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    })
}

/// Seconds as shown in the final table.
pub fn seconds(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

/// Bytes as shown in the final table: `512K`, `12.3M`, `1.5G`.
pub fn bytes(n: u64) -> String {
    const K: f64 = 1024.0;
    let f = n as f64;
    if f < K * K {
        format!("{:.0}K", f / K)
    } else if f < K * K * K {
        format!("{:.1}M", f / (K * K))
    } else {
        format!("{:.1}G", f / (K * K * K))
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::cgroup::Limits;
    use crate::conf::ChrootConf;
    use crate::sandbox::Network;

    fn record(id: &str) -> RunRecord {
        RunRecord {
            id: id.into(),
            pid: std::process::id(),
            args: vec!["portroot".into(), "run".into()],
            start: 0,
            stage: "s".into(),
            stage_digest: crate::digest::StageDigest::parse(&"0".repeat(64)).unwrap(),
            layers: vec!["/stage/rootfs".into()],
            layer_names: vec![],
            trees: vec![],
            caches: vec![],
            conf: ChrootConf {
                repos: vec![],
                distdir: "/d".into(),
                pkgdir: "/p".into(),
                local_mirror: None,
                resolv_conf: None,
                features: Vec::new(),
                make_conf_lines: Vec::new(),
            },
            network: Network::Host,
            keep: false,
            jobs: vec!["1".into()],
            limits: Limits::default(),
            tmpfs: vec![],
            cgroups: vec![],
            outcomes: None,
            refused: Vec::new(),
            binhost: None,
        }
    }

    #[test]
    fn run_ids_are_utc_stamps_with_a_suffix() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_523_096); // 2026-11-24 12:24:56
        let id = new_run_id(t);
        assert!(id.starts_with("20261124-122456-"), "{id}");
        assert_eq!(id.len(), "20261124-090456-ab12".len());
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(951_782_400), "20000229-000000");
    }

    #[test]
    fn live_run_is_listed_live_and_survives_gc() {
        let store = tempfile::tempdir().unwrap();
        let runs = store.path().join("runs");
        let run = RunDir::create(&runs, &record("r1")).unwrap();
        let listed = list_runs(&runs).unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].live);
        assert_eq!(listed[0].record.as_ref().unwrap().id, "r1");
        let report = gc(&runs, true).unwrap();
        assert_eq!(report.live, 1);
        assert!(run.path.is_dir());
        assert!(RunDir::reopen(&runs, "r1").is_err());
        drop(run);
        assert!(!list_runs(&runs).unwrap()[0].live);
    }

    #[test]
    fn gc_removes_dead_unfinished_runs_and_keeps_finished_ones() {
        let store = tempfile::tempdir().unwrap();
        let runs = store.path().join("runs");
        drop(RunDir::create(&runs, &record("killed")).unwrap());
        let done = RunDir::create(&runs, &record("done")).unwrap();
        let mut rec = record("done");
        rec.outcomes = Some(vec![]);
        done.save(&rec).unwrap();
        drop(done);
        fs::create_dir_all(runs.join(".new-half")).unwrap();
        fs::create_dir_all(runs.join(".new-fresh")).unwrap();
        // An hour old: its creator is long gone.
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        fs::File::open(runs.join(".new-half"))
            .unwrap()
            .set_modified(old)
            .unwrap();

        let report = gc(&runs, false).unwrap();
        let mut removed = report.removed.clone();
        removed.sort();
        assert_eq!(removed, [".new-half", "killed"]);
        assert_eq!(report.kept, 1);
        assert_eq!(report.live, 1, "the fresh half-made run is left alone");
        assert!(runs.join("done").is_dir());
        assert_eq!(gc(&runs, true).unwrap().removed, ["done"]);
        assert_eq!(fs::read_dir(&runs).unwrap().count(), 1);
    }

    #[test]
    fn remove_chroot_keeps_log_and_status() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobDir(dir.path().to_owned());
        for d in [job.upper().join("etc"), job.work(), job.root()] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(job.log(), "hi").unwrap();
        fs::write(job.status(), "ok\n").unwrap();
        remove_chroot(&job).unwrap();
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["log", "status"]);
    }
}
