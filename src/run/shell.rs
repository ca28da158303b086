//! `portroot shell`: one interactive chroot, fresh over pinned inputs or a
//! job kept by `run --keep`, entered through the same sandbox as a job.

use std::io::IsTerminal;
use std::time::SystemTime;

use anyhow::{bail, Context};
use portroot_runner::cgroup::{Limits, RunCgroup};
use portroot_runner::layer::LayerLease;
use portroot_runner::run::{self as runs, RunDir, RunRecord};
use portroot_runner::sandbox;
use portroot_runner::stage::StageLease;

use super::execute::{ensure_caches, helper, mount_trees, private_mount_namespace, run_cgroup};
use super::pin::Pinned;
use super::pin::{lease_layers, lease_stage};
use crate::store::Store;

/// A shell ready to start: its run directory, record and cgroup made, its
/// inputs leased.
pub struct Shell {
    run_dir: RunDir,
    record: RunRecord,
    job: String,
    /// A fresh shell's run goes when it ends; a kept job stays.
    remove_after: bool,
    cgroups: RunCgroup,
    mount: portroot_fs::MountOptions,
    _leases: (StageLease, LayerLease),
}

impl Shell {
    /// A shell in a new chroot over the `pinned` inputs, as job `shell` of a
    /// run of its own.
    pub fn fresh(store: &Store, pinned: Pinned) -> anyhow::Result<Shell> {
        let id = runs::new_run_id(SystemTime::now());
        let runs_dir = store.runs_dir();
        private_mount_namespace()?;
        let cgroups = run_cgroup(&id, pinned.limits)?;
        ensure_caches(&pinned.caches)?;
        let mut record = super::execute::run_record(&id, &pinned, false, vec!["shell".into()]);
        record.place_trees(&runs_dir.join(&id));
        record.cgroups = cgroups.paths();
        Ok(Shell {
            run_dir: RunDir::create(&runs_dir, &record)?,
            record,
            job: "shell".to_owned(),
            remove_after: true,
            cgroups,
            mount: pinned.mount,
            _leases: (pinned.stage, pinned.layers),
        })
    }

    /// Start the shell and wait for it; its exit code (128 + signal if it
    /// was killed). The run directory goes afterwards if the shell was fresh.
    pub fn run(self) -> anyhow::Result<i32> {
        let result = self.enter();
        drop(self.cgroups);
        if self.remove_after {
            std::fs::remove_dir_all(&self.run_dir.path)
                .with_context(|| format!("removing {}", self.run_dir.path.display()))?;
        } else {
            let _ = std::fs::remove_dir_all(self.run_dir.path.join("repos"));
        }
        result
    }

    fn enter(&self) -> anyhow::Result<i32> {
        // Like system(3): the terminal's Ctrl-C and Ctrl-\ are for the shell
        // inside, not for us. Blocked before the FUSE threads start, so they
        // inherit it; the helper resets its mask.
        use nix::sys::signal::{SigSet, Signal};
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGQUIT);
        set.thread_block().context("blocking SIGINT and SIGQUIT")?;
        let _mounts = mount_trees(&self.record.trees, &self.mount)?;
        let dir = self.run_dir.job(&self.job);
        for d in [dir.0.clone(), dir.upper(), dir.work(), dir.root()] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let group = self.cgroups.create_job(&self.job)?;
        let term = std::env::var("TERM").ok();
        let mut spec = self
            .record
            .spec(&dir, &self.job, sandbox::Command::Interactive, term);
        spec.cgroup = Some(group.spec.clone());
        let spec_path = dir.0.join("shell.json");
        spec.save(&spec_path)?;
        if !std::io::stdin().is_terminal() {
            tracing::debug!("standard input is not a terminal: the shell reads it as a script");
        }
        let status = helper()
            .command(&spec_path)
            .status()
            .context("starting the sandbox helper");
        let _ = std::fs::remove_file(&spec_path);
        if let (_, Some(e)) = group.finish() {
            tracing::warn!(error = %e, "cleaning up the shell's cgroup");
        }
        let status = status?;
        use std::os::unix::process::ExitStatusExt;
        Ok(status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(1))
    }
}

/// A shell in job `job` of run `id`, kept by `run --keep`, with each job's
/// `limits` and the trees mounted with `mount`.
pub fn reenter(
    store: &Store,
    id: &str,
    job: &str,
    limits: Limits,
    mount: portroot_fs::MountOptions,
) -> anyhow::Result<Shell> {
    let (run_dir, record) = RunDir::reopen(&store.runs_dir(), id)?;
    if !record.jobs.iter().any(|j| j == job) {
        bail!("run {id} has no job {job}");
    }
    if !run_dir.job(job).upper().is_dir() {
        bail!("run {id} did not keep job {job} (run it with --keep)");
    }
    let stage = lease_stage(store, &record.stage_digest)?;
    let layers = lease_layers(store, &record.stage_digest, &record.layer_names)?;
    private_mount_namespace()?;
    let cgroups = run_cgroup(id, limits)?;
    Ok(Shell {
        run_dir,
        record,
        job: job.to_owned(),
        remove_after: false,
        cgroups,
        mount,
        _leases: (stage, layers),
    })
}
