//! Steps 2 to 4 of a run: the namespace, the mounts, the pool, the teardown;
//! the outcome returned as data for the command to print.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use portroot_runner::caches::{self, Refused};
use portroot_runner::cgroup::{self, Limits, RunCgroup};
use portroot_runner::conf;
use portroot_runner::job::{Job, JobOutcome};
use portroot_runner::pool::{self, Event};
use portroot_runner::run::{self as runs, Children, Helper, RunDir, RunRecord, TreeRecord};
use tracing::info;

use super::pin::Pinned;
use crate::store::Store;

/// The jobs of one run and how they run.
pub struct Batch {
    /// The jobs.
    pub jobs: Vec<Job>,
    /// How many run at once (at least 1).
    pub workers: usize,
    /// Keep each job's chroot for `portroot shell --run ID --job NAME`.
    pub keep: bool,
    /// Publish the run's binhost generation if every job succeeded and
    /// nothing was refused from it.
    pub publish: bool,
}

/// What [`execute`] hands its caller's `finish` once every job ended and the
/// trees are unmounted, before the chroots are removed.
pub struct Finished<'a> {
    /// The run directory (still locked).
    pub run_dir: &'a RunDir,
    /// Its record.
    pub record: &'a RunRecord,
    /// How each job went.
    pub outcomes: &'a [JobOutcome],
    /// Whether SIGINT or SIGTERM stopped the run (so far: a signal may still
    /// come while the caller works).
    pub interrupted: &'a dyn Fn() -> bool,
}

/// How a run went, for the command to print.
pub struct Outcome {
    /// The run id.
    pub id: String,
    /// `runs/<id>/`.
    pub path: PathBuf,
    /// The record as saved in `run.json`, outcomes and refusals included.
    pub record: RunRecord,
    /// How each job went, in the jobs' order.
    pub outcomes: Vec<JobOutcome>,
    /// The first error of the teardown (the caller's `finish` first, then
    /// removing mount points and chroots): the jobs ran, but the run did
    /// not end clean.
    pub teardown_error: Option<anyhow::Error>,
    /// The binhost check's failure, if it could not run, or the failure to
    /// count or publish the run's generation.
    pub binhost_error: Option<anyhow::Error>,
    /// Whether the run's generation was published.
    pub published: bool,
    /// The signal that stopped the run, if any.
    pub signal: Option<i32>,
}

impl Outcome {
    /// How many jobs did not succeed.
    pub fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| !o.status.success()).count()
    }
}

/// Run `batch` over the `pinned` inputs in the store; `observe` sees every
/// job start and end (for a progress bar), `finish` sees the jobs' chroots
/// before they are removed (`layer create` takes the upper directory from
/// there). An error is returned only if the run could not start or its
/// record could not be saved; everything after the jobs started is in the
/// outcome.
pub fn execute(
    store: &Store,
    pinned: Pinned,
    batch: Batch,
    observe: &mut dyn FnMut(&Event),
    finish: &mut dyn FnMut(Finished<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    anyhow::ensure!(batch.workers > 0, "--jobs must be at least 1");
    let id = runs::new_run_id(SystemTime::now());
    let runs_dir = store.runs_dir();
    private_mount_namespace()?;
    let cgroups = run_cgroup(&id, pinned.limits)?;
    ensure_caches(&pinned.caches)?;
    let mut record = start_record(&id, &pinned, &batch, &runs_dir, &cgroups);
    // Before any thread exists (the FUSE sessions start some), so that every
    // thread inherits the blocked mask and only ours sees the signals.
    let cancel = Arc::new(AtomicBool::new(false));
    let signal = Arc::new(AtomicI32::new(0));
    let children = Arc::new(Children::default());
    handle_signals(cancel.clone(), signal.clone(), children.clone())?;
    let (run_dir, mounts) = open_run(&runs_dir, &mut record, &pinned)?;
    let total = batch.jobs.len();
    info!(run = %id, jobs = total, workers = batch.workers, "run started");
    let term = std::env::var("TERM").ok();
    let helper = helper();
    let outcomes = pool::run(
        batch.jobs,
        batch.workers,
        &cancel,
        |job| {
            let cg = Some(&cgroups);
            runs::execute_job(&run_dir, &record, &helper, &children, cg, job, term.clone())
        },
        |ev| observe(ev),
    );
    drop(mounts);
    // Every job's group is gone already; the run's goes before the record
    // says the run ended.
    drop(cgroups);
    let interrupted = || signal.load(Ordering::SeqCst) != 0;
    let keep = batch.keep && !interrupted();
    let teardown = tear_down(&run_dir, &record, &outcomes, keep, &interrupted, finish);
    let refused = check_binhost(&record, &run_dir);
    record.outcomes = Some(outcomes.clone());
    record.refused = refused.as_ref().map_or_else(|_| Vec::new(), Clone::clone);
    let settled = super::generation::settle(&mut record, batch.publish && !interrupted());
    run_dir.save(&record)?;
    // The page a person opens; a run is not failed for want of it.
    if let Err(e) = crate::report::write(&run_dir.path, &record) {
        tracing::warn!(error = %e, "writing the run's report");
    }
    let failed = outcomes.iter().filter(|o| !o.status.success()).count();
    info!(run = %id, jobs = total, failed, refused = record.refused.len(), secs = started.elapsed().as_secs_f64(), "run finished");
    let sig = signal.load(Ordering::SeqCst);
    Ok(Outcome {
        id,
        path: run_dir.path.clone(),
        record,
        outcomes,
        teardown_error: teardown.err(),
        published: settled.as_ref().is_ok_and(|p| *p),
        binhost_error: match (refused, settled) {
            (Err(e), _) => Some(e.context("checking the binhost")),
            (_, Err(e)) => Some(e),
            _ => None,
        },
        signal: (sig != 0).then_some(sig),
    })
}

/// The record of the run about to start: its trees' mount points and its
/// cgroups.
fn start_record(
    id: &str,
    pinned: &Pinned,
    batch: &Batch,
    runs_dir: &Path,
    cgroups: &RunCgroup,
) -> RunRecord {
    let names = batch.jobs.iter().map(|j| j.name.clone()).collect();
    let mut record = run_record(id, pinned, batch.keep, names);
    record.place_trees(&runs_dir.join(id));
    record.cgroups = cgroups.paths();
    record
}

/// The run's directory, then (with a binhost) its generation, then its
/// trees mounted. The generation is made once the run's lock is held, so
/// `binhost gc` sees it in use from the start. On failure the run
/// directory goes; a generation already made is left unpublished for
/// `binhost gc`.
fn open_run(
    runs_dir: &Path,
    record: &mut RunRecord,
    pinned: &Pinned,
) -> anyhow::Result<(RunDir, Vec<TreeMount>)> {
    let run_dir = RunDir::create(runs_dir, record)?;
    let opened = (|| {
        if let Some(root) = &pinned.binhost {
            super::generation::create(root, record)?;
            run_dir.save(record)?;
        }
        mount_trees(&record.trees, &pinned.mount)
    })();
    match opened {
        Ok(mounts) => Ok((run_dir, mounts)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&run_dir.path);
            Err(e)
        }
    }
}

/// After the pool: the mount points go, the caller's `finish` sees the
/// chroots, then they go too unless kept. The first error wins, the caller's
/// first.
fn tear_down(
    run_dir: &RunDir,
    record: &RunRecord,
    outcomes: &[JobOutcome],
    keep: bool,
    interrupted: &dyn Fn() -> bool,
    finish: &mut dyn FnMut(Finished<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let finish_err = finish(Finished {
        run_dir,
        record,
        outcomes,
        interrupted,
    })
    .err();
    // The tree mount points (unmounted by now) and, unless kept, every
    // job's chroot: all at once (see `remove_chroots`).
    let chroots: Vec<_> = if keep {
        Vec::new()
    } else {
        outcomes.iter().map(|o| run_dir.job(&o.name)).collect()
    };
    let cleanup_err = runs::remove_chroots(&chroots, &[run_dir.path.join("repos")])
        .context("removing the run's chroots and mount points")
        .err();
    match finish_err.or(cleanup_err) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Make every mount of this process private to it: called first, while the
/// process is still single-threaded (unshare(CLONE_NEWNS) requires it).
pub fn private_mount_namespace() -> anyhow::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("creating the run's mount namespace (are you root?)")?;
    portroot_runner::sandbox::make_mounts_private()
        .context("making / private in the run's mount namespace")?;
    Ok(())
}

/// The run's cgroup `portroot/<id>` under ours, with each job's `limits`
/// checked against the controllers there are.
pub(super) fn run_cgroup(id: &str, limits: Limits) -> anyhow::Result<RunCgroup> {
    let hierarchies = cgroup::detect_hierarchies()?;
    Ok(RunCgroup::create(&hierarchies, id, limits)?)
}

/// The shared DISTDIR and PKGDIR (the store's unless configured), created
/// on first use. A new DISTDIR is made `root:portage` mode 2775, as Gentoo
/// ships `/var/cache/distfiles`: with FEATURES=userfetch portage fetches as
/// the portage user, and otherwise chmods the directory itself on its first
/// fetch. A directory that already exists is the user's and left alone.
pub(super) fn ensure_caches(caches: &[portroot_runner::plan::Bind]) -> anyhow::Result<()> {
    for bind in caches {
        let dir = &bind.source;
        if bind.target == Path::new(conf::DISTDIR) {
            caches::create_distdir(dir)?;
        } else {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    Ok(())
}

/// Refuse what the run left in PKGDIR that a binhost must not serve: move it
/// into `runs/<id>/refused/`.
fn check_binhost(record: &RunRecord, run_dir: &RunDir) -> anyhow::Result<Vec<Refused>> {
    let Some(pkgdir) = record.pkgdir() else {
        return Ok(Vec::new());
    };
    Ok(caches::check_pkgdir(pkgdir, &run_dir.path.join("refused"))?)
}

/// A tree mounted for the run; dropping it unmounts.
pub(super) type TreeMount = portroot_fs::MountedFs;

/// Mount every tree of the run (in this process, in its private namespace),
/// each at its pinned commit.
pub(super) fn mount_trees(
    trees: &[TreeRecord],
    opts: &portroot_fs::MountOptions,
) -> anyhow::Result<Vec<TreeMount>> {
    let mut mounted = Vec::new();
    for t in trees {
        std::fs::create_dir_all(&t.mountpoint)
            .with_context(|| format!("creating {}", t.mountpoint.display()))?;
        // The fs crate's defaults otherwise: allow_other (portage reads as
        // uid 250). The run's private namespace takes the mount along if we
        // die.
        let view = t.commit.clone().unwrap_or_else(|| t.reference.clone());
        let mount = portroot_fs::mount(
            &t.git_dir,
            portroot_fs::View::Ref(view),
            &t.mountpoint,
            opts,
        )
        .with_context(|| format!("mounting {} at {}", t.name, t.reference))?;
        mounted.push(mount);
    }
    Ok(mounted)
}

/// The sandbox helper: this binary, re-executed.
pub(super) fn helper() -> Helper {
    Helper {
        program: PathBuf::from("/proc/self/exe"),
        args: vec!["internal".into(), "sandbox".into()],
    }
}

/// Block SIGINT and SIGTERM in every thread (call before spawning any) and
/// let one thread handle them: mark the run cancelled and kill every helper,
/// repeatedly, so a job started in the meantime dies too.
fn handle_signals(
    cancel: Arc<AtomicBool>,
    signal: Arc<AtomicI32>,
    children: Arc<Children>,
) -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("blocking SIGINT and SIGTERM")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                signal.store(sig as i32, Ordering::SeqCst);
                cancel.store(true, Ordering::SeqCst);
                loop {
                    children.kill_all();
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// What `run.json` records of a run about to start.
pub(super) fn run_record(id: &str, pinned: &Pinned, keep: bool, jobs: Vec<String>) -> RunRecord {
    RunRecord {
        id: id.to_owned(),
        pid: std::process::id(),
        args: std::env::args().collect(),
        start: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        stage: pinned.stage_name.clone(),
        layers: pinned
            .layers
            .lowers_top_first()
            .into_iter()
            .chain([pinned.stage.stage.rootfs.clone()])
            .collect(),
        layer_names: pinned
            .layers
            .layers
            .iter()
            .map(|l| l.record.name.clone())
            .collect(),
        stage_digest: pinned.stage.stage.digest.clone(),
        trees: pinned.trees.clone(),
        caches: pinned.caches.clone(),
        conf: pinned.conf.clone(),
        network: pinned.network,
        keep,
        jobs,
        limits: pinned.limits,
        tmpfs: pinned.tmpfs.clone(),
        cgroups: Vec::new(),
        outcomes: None,
        refused: Vec::new(),
        binhost: None,
    }
}
