//! One task of a run handed to Slurm, on whichever node it landed: check
//! that the node's store holds exactly the pinned ids, fetch the stage by
//! URL and sha256 when it lacks it (under a lock, so two tasks on one node
//! fetch once) and each layer likewise by its export's URL and sha256,
//! then run the one job through the same path as a local run
//! ([`super::pin`], [`super::execute`]) and write its result into the shared
//! run directory.
//!
//! A task that cannot get an input fails its own job only: the reason, one
//! line, goes into the job's log and its result, and the task exits 1.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use portroot_runner::job::{JobOutcome, JobStatus};

use super::remote::{self, RemoteSpec, TaskResult};
use crate::store::Store;

/// The node's side of what it needs besides the spec.
pub struct Node {
    /// The node's own store.
    pub store: Store,
    /// The node's `repo` (the store repository served as gentoo).
    pub main_repo: String,
    /// How the node mounts trees.
    pub mount: portroot_fs::MountOptions,
}

/// Run task `index` of the run in `dir` (the shared run directory) on this
/// node; `Ok(true)` if its job succeeded. An error means not even a result
/// could be written.
pub fn run_task(node: &Node, dir: &Path, index: usize) -> anyhow::Result<bool> {
    let spec = RemoteSpec::load(dir)?;
    let Some(job) = spec.jobs.get(index).cloned() else {
        bail!("{}: no job {index} in the run", dir.display());
    };
    let tdir = remote::task_dir(dir, index);
    std::fs::create_dir_all(&tdir).with_context(|| format!("creating {}", tdir.display()))?;
    let shared_log = tdir.join("log");
    let mut fetched = Vec::new();
    let outcome = match prepare(node, &spec, &mut fetched) {
        Err(e) => {
            let reason = format!("{e:#}");
            std::fs::write(&shared_log, format!("portroot: {reason}\n"))
                .with_context(|| format!("writing {}", shared_log.display()))?;
            let outcome = JobOutcome {
                name: job.name.clone(),
                status: JobStatus::Error(reason.clone()),
                duration: Duration::ZERO,
                log: shared_log,
                usage: Default::default(),
            };
            return finish(dir, index, outcome, Some(reason), fetched);
        }
        Ok(()) => run_one(node, &spec, job, &shared_log)?,
    };
    finish(dir, index, outcome, None, fetched)
}

/// Write the result; whether the job succeeded.
fn finish(
    dir: &Path,
    index: usize,
    outcome: JobOutcome,
    reason: Option<String>,
    fetched: Vec<String>,
) -> anyhow::Result<bool> {
    let ok = outcome.status.success();
    let result = TaskResult {
        node: node_name(),
        outcome,
        reason,
        fetched,
    };
    remote::save_result(dir, index, &result)?;
    Ok(ok)
}

/// Make sure the node's store has the pinned stage and main tree commit
/// (fetching what it lacks when the run names where from); further trees
/// and layers must be there already.
fn prepare(node: &Node, spec: &RemoteSpec, fetched: &mut Vec<String>) -> anyhow::Result<()> {
    prepare_stage(node, spec, fetched)?;
    prepare_tree(node, spec, fetched)?;
    for layer in &spec.layers {
        prepare_layer(node, layer, fetched)?;
    }
    Ok(())
}

/// Whether the node holds `want` by its id: `Ok(false)` if it lacks the
/// name, an error if the name is another layer.
fn has_layer(node: &Node, want: &remote::PinnedLayer) -> anyhow::Result<bool> {
    let layers =
        portroot_runner::layer::LayerStore::new(node.store.layers_dir(), node.store.tmp_dir());
    match layers.get(&want.name) {
        Ok(l) if l.record.id == want.id => Ok(true),
        Ok(l) => bail!(
            "layer {}: the node has id {}, the run pinned {}",
            want.name,
            l.record.id,
            want.id
        ),
        Err(portroot_runner::error::Error::UnknownLayer(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A layer the node lacks, fetched by URL and export digest (the spec lists
/// parents first) under a per-digest lock, then checked by its id.
fn prepare_layer(
    node: &Node,
    want: &remote::PinnedLayer,
    fetched: &mut Vec<String>,
) -> anyhow::Result<()> {
    if has_layer(node, want)? {
        return Ok(());
    }
    let (Some(url), Some(digest)) = (&want.url, &want.digest) else {
        bail!(
            "layer {} (id {}) is not in the node's store and the run names no URL for it",
            want.name,
            want.id
        );
    };
    let tmp = node.store.tmp_dir();
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let _lock = lock(&tmp.join(format!("fetch-{digest}.lock")))?;
    if has_layer(node, want)? {
        return Ok(());
    }
    child(&node.store, &["layer", "add", url, "--sha256", digest])
        .with_context(|| format!("fetching layer {}", want.name))?;
    if !has_layer(node, want)? {
        bail!(
            "layer {}: {url} holds another layer than id {}",
            want.name,
            want.id
        );
    }
    fetched.push(format!("layer {} {}", want.name, want.id));
    Ok(())
}

/// Whether the main tree's pinned commit is in the node's repository.
fn has_main_commit(node: &Node, spec: &RemoteSpec) -> bool {
    let Some(main) = spec.trees.first() else {
        return true;
    };
    let Ok(oid) = git2::Oid::from_str(&main.commit) else {
        return false;
    };
    git2::Repository::open_bare(node.store.repo_path(&node.main_repo))
        .is_ok_and(|r| r.find_object(oid, None).is_ok())
}

/// Fetch the snapshots from the team remote if the main tree's commit is
/// missing, under a lock (one fetch per node).
fn prepare_tree(node: &Node, spec: &RemoteSpec, fetched: &mut Vec<String>) -> anyhow::Result<()> {
    let (Some(remote), Some(main)) = (&spec.tree_remote, spec.trees.first()) else {
        return Ok(());
    };
    if has_main_commit(node, spec) {
        return Ok(());
    }
    let tmp = node.store.tmp_dir();
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let _lock = lock(&tmp.join(format!("fetch-repo-{}.lock", node.main_repo)))?;
    if has_main_commit(node, spec) {
        return Ok(());
    }
    child(
        &node.store,
        &["snapshot", "fetch", remote, "--repo", &node.main_repo],
    )
    .with_context(|| format!("fetching tree {} from {remote}", main.commit))?;
    fetched.push(format!("tree {}", main.commit));
    Ok(())
}

/// The stage, fetched by URL and digest if the node lacks it.
fn prepare_stage(node: &Node, spec: &RemoteSpec, fetched: &mut Vec<String>) -> anyhow::Result<()> {
    let stages =
        portroot_runner::stage::StageStore::new(node.store.stages_dir(), node.store.tmp_dir());
    if stages.resolve(spec.stage.as_str()).is_ok() {
        return Ok(());
    }
    let Some(url) = &spec.stage_url else {
        bail!(
            "stage {} is not in the node's store and the run names no URL for it",
            spec.stage.short()
        );
    };
    let tmp = node.store.tmp_dir();
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let _lock = lock(&tmp.join(format!("fetch-{}.lock", spec.stage.as_str())))?;
    // Another task on this node may have fetched it while we waited.
    if stages.resolve(spec.stage.as_str()).is_ok() {
        return Ok(());
    }
    fetch_stage(&node.store, url, spec.stage.as_str())
        // The downloader's error names the URL already.
        .with_context(|| format!("fetching stage {}", spec.stage.short()))?;
    fetched.push(format!("stage {}", spec.stage.as_str()));
    Ok(())
}

/// `portroot stage add URL --sha256 HEX` into the node's store, as a child:
/// its downloader's threads stay out of this process, which must still be
/// single-threaded when the run unshares its mount namespace.
fn fetch_stage(store: &Store, url: &str, digest: &str) -> anyhow::Result<()> {
    child(store, &["stage", "add", url, "--sha256", digest])
}

/// `portroot --store STORE -q ARGS` as a child; its last stderr line as the
/// error.
fn child(store: &Store, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("/proc/self/exe")
        .arg("--store")
        .arg(store.root())
        .arg("-q")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting portroot {}", args.join(" ")))?;
    if out.status.success() {
        return Ok(());
    }
    let last = crate::output::last_line(&out.stderr);
    bail!("{}", last.trim_start_matches("portroot: error: "))
}

/// Pin on the node (checking every id) and run the job as a local run of
/// one; its log is copied to `shared_log`.
fn run_one(
    node: &Node,
    spec: &RemoteSpec,
    job: portroot_runner::job::Job,
    shared_log: &Path,
) -> anyhow::Result<JobOutcome> {
    let name = job.name.clone();
    let failed = |reason: String| -> anyhow::Result<JobOutcome> {
        std::fs::write(shared_log, format!("portroot: {reason}\n"))
            .with_context(|| format!("writing {}", shared_log.display()))?;
        Ok(JobOutcome {
            name: name.clone(),
            status: JobStatus::Error(reason),
            duration: Duration::ZERO,
            log: shared_log.to_owned(),
            usage: Default::default(),
        })
    };
    let settings = spec.settings(node.main_repo.clone(), node.mount.clone());
    let Some(main) = spec.trees.first() else {
        return failed("the run pins no tree".into());
    };
    let pinned = match super::pin(&node.store, spec.stage.as_str(), &main.commit, &settings) {
        Ok(p) => p,
        Err(e) => return failed(format!("{e:#}")),
    };
    if let Err(reason) = check_ids(spec, &pinned) {
        return failed(reason);
    }
    let batch = super::Batch {
        jobs: vec![job],
        workers: 1,
        keep: false,
        publish: false,
    };
    let outcome = super::execute(&node.store, pinned, batch, &mut |_| {}, &mut |_| Ok(()))?;
    let mut o = outcome
        .outcomes
        .into_iter()
        .next()
        .context("the run returned no outcome")?;
    if std::fs::copy(&o.log, shared_log).is_err() {
        std::fs::write(shared_log, b"")
            .with_context(|| format!("writing {}", shared_log.display()))?;
    }
    o.log = PathBuf::from(shared_log);
    Ok(o)
}

/// Whether what the node pinned is what the submitter pinned, id by id;
/// otherwise one line saying which input differs.
fn check_ids(spec: &RemoteSpec, pinned: &super::Pinned) -> Result<(), String> {
    if pinned.stage.stage.digest != spec.stage {
        return Err(format!(
            "stage: the node has {}, the run pinned {}",
            pinned.stage.stage.digest.short(),
            spec.stage.short()
        ));
    }
    for (want, got) in spec.trees.iter().zip(&pinned.trees) {
        if got.commit.as_deref() != Some(want.commit.as_str()) {
            return Err(format!(
                "tree {}: the node resolved {}, the run pinned {}",
                want.name,
                got.commit.as_deref().unwrap_or("nothing"),
                want.commit
            ));
        }
    }
    for (want, got) in spec.layers.iter().zip(&pinned.layers.layers) {
        if got.record.id != want.id {
            return Err(format!(
                "layer {}: the node has id {}, the run pinned {}",
                want.name, got.record.id, want.id
            ));
        }
    }
    Ok(())
}

/// An exclusive flock on `path`, waited for: the holder's fetch ends (its
/// download has a read timeout).
fn lock(path: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", path.display()))
}

/// The node's name as Slurm knows it, else the host name.
fn node_name() -> String {
    std::env::var("SLURMD_NODENAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .map(|h| h.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "?".into())
}
