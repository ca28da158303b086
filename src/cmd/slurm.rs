//! `portroot run --scheduler slurm`, `--retry-failed` and the hidden
//! `run-task` a node runs per job: flags and the `[slurm]` configuration
//! turned into [`SlurmOptions`], and the table. The submitting, polling and
//! collecting is [`portroot::run::slurm`]; a node's side is
//! [`portroot::run::task`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use clap::Args;
use portroot::run::remote::{self, RemoteSpec};
use portroot::run::slurm::{self, SlurmOptions, SlurmRun};
use portroot::run::task::{self, Node};
use portroot_runner::job::Job;
use portroot_runner::run as runs;

use portroot::config::Scheduler;

use super::run::{ChrootArgs, RunArgs};
use super::Ctx;

/// Arguments of the hidden `portroot run-task`.
#[derive(Debug, Args)]
pub struct RunTaskArgs {
    /// The shared run directory (`SHARED/RUN-ID`).
    dir: PathBuf,
    /// The job's index in the run (`SLURM_ARRAY_TASK_ID`).
    index: usize,
}

/// A configuration or flag the slurm scheduler cannot work without: exit 2.
struct Usage(String);

/// How this run reaches Slurm: the `[slurm]` configuration with defaults.
fn options(ctx: &Ctx) -> Result<SlurmOptions, Usage> {
    let conf = &ctx.config.merged.slurm;
    let Some(shared_dir) = conf.shared_dir.clone() else {
        return Err(Usage(
            "slurm.shared_dir is not set: --scheduler slurm needs a directory every node can write"
                .into(),
        ));
    };
    let node_store = match conf.store.clone() {
        Some(s) => s,
        None => std::path::absolute(ctx.store.root())
            .map_err(|e| Usage(format!("resolving the store path: {e}")))?,
    };
    let portroot = match conf.portroot.clone() {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| Usage(format!("finding this binary's path: {e}")))?,
    };
    Ok(SlurmOptions {
        bin_dir: conf.bin_dir.clone(),
        partition: conf.partition.clone(),
        account: conf.account.clone(),
        sbatch_options: conf.sbatch_options.clone().unwrap_or_default(),
        shared_dir,
        node_store,
        portroot,
        max_wait: conf.max_wait.map(std::time::Duration::from_secs),
    })
}

/// The inputs of a new Slurm run.
struct Submission<'a> {
    /// `--stage`.
    pub stage: &'a str,
    /// `--tag`.
    pub tag: &'a str,
    /// The chroots' flags.
    pub chroot: &'a ChrootArgs,
    /// The jobs.
    pub jobs: Vec<Job>,
    /// `--stage-url`.
    pub stage_url: Option<String>,
    /// `--layer-url NAME=URL`, each.
    pub layer_urls: Vec<String>,
}

/// `portroot run`: `--retry-failed`, else the scheduler the flag or the
/// config picks (local: [`super::run::run`]).
pub fn run(ctx: &Ctx, args: RunArgs) -> anyhow::Result<ExitCode> {
    if let Some(id) = &args.retry_failed {
        return retry(ctx, id);
    }
    let scheduler = args
        .scheduler
        .or(ctx.config.merged.run.scheduler)
        .unwrap_or(Scheduler::Local);
    if scheduler == Scheduler::Local {
        return super::run::run(ctx, args);
    }
    if args.keep {
        // The chroots would be kept on whichever node ran them.
        return Ok(usage("--keep is for local runs"));
    }
    if args.binhost.is_some() || args.publish {
        // Every node's task is a run of its own, writing into the shared
        // PKGDIR; generations are made and published by local runs.
        return Ok(usage("--binhost and --publish are for local runs"));
    }
    let (Some(stage), Some(tag)) = (&args.stage, &args.tag) else {
        anyhow::bail!("give --stage and --tag");
    };
    let sub = Submission {
        stage,
        tag,
        chroot: &args.chroot,
        jobs: super::run::read_jobs(&args)?,
        stage_url: args.stage_url.clone(),
        layer_urls: args.layer_urls.clone(),
    };
    submit(ctx, sub)
}

/// `portroot run --scheduler slurm`: pin here, submit, wait, print.
fn submit(ctx: &Ctx, sub: Submission<'_>) -> anyhow::Result<ExitCode> {
    let opts = match options(ctx) {
        Ok(o) => o,
        Err(Usage(msg)) => return Ok(usage(&msg)),
    };
    if let Some(url) = &sub.stage_url {
        if let Err(Usage(msg)) = check_url("--stage-url", url) {
            return Ok(usage(&msg));
        }
    }
    let settings = super::run::settings(ctx, sub.chroot)?;
    let pinned = portroot::run::pin(&ctx.store, sub.stage, sub.tag, &settings)?;
    let id = runs::new_run_id(SystemTime::now());
    let mut spec = RemoteSpec::new(&id, &pinned, sub.stage_url, sub.jobs);
    spec.tree_remote = ctx.config.merged.slurm.tree_remote.clone();
    if let Err(Usage(msg)) = pin_layer_urls(&mut spec, &pinned, &sub.layer_urls) {
        return Ok(usage(&msg));
    }
    let start = SystemTime::now();
    let done = slurm::submit(&spec, &opts)?;
    drop(pinned);
    record(ctx, &spec, &done, start);
    Ok(report(&done))
}

/// What `stage add` and `layer add` download on a node: http, https or file.
fn check_url(flag: &str, url: &str) -> Result<(), Usage> {
    if !portroot::http::is_url(url) || portroot::http::file_name(url).is_none() {
        return Err(Usage(format!(
            "{flag}: bad URL {url:?}: expected http://, https:// or file:// naming a file"
        )));
    }
    Ok(())
}

/// Record each `--layer-url NAME=URL` in the spec with the sha256 the
/// layer's last `layer export` recorded: a node fetches that file and
/// checks it by that digest, then the layer by its creation id.
fn pin_layer_urls(
    spec: &mut RemoteSpec,
    pinned: &portroot::run::Pinned,
    urls: &[String],
) -> Result<(), Usage> {
    for arg in urls {
        let Some((name, url)) = arg.split_once('=') else {
            return Err(Usage(format!("--layer-url: {arg:?} is not NAME=URL")));
        };
        check_url("--layer-url", url)?;
        let (Some(layer), Some(slot)) = (
            pinned.layers.layers.iter().find(|l| l.record.name == name),
            spec.layers.iter_mut().find(|l| l.name == name),
        ) else {
            return Err(Usage(format!(
                "--layer-url: the run uses no layer {name} (give it with --layer)"
            )));
        };
        let Some(digest) = portroot_runner::layer::file::recorded_digest(&layer.dir) else {
            return Err(Usage(format!(
                "--layer-url: layer {name} was never exported: run `portroot layer export {name} -o FILE` and serve FILE at {url}"
            )));
        };
        slot.digest = Some(digest);
        slot.url = Some(url.to_owned());
    }
    Ok(())
}

/// `portroot run --retry-failed RUN-ID`: the failed jobs of an earlier Slurm
/// run, again, with the same pinned inputs.
fn retry(ctx: &Ctx, run_id: &str) -> anyhow::Result<ExitCode> {
    let opts = match options(ctx) {
        Ok(o) => o,
        Err(Usage(msg)) => return Ok(usage(&msg)),
    };
    if !portroot::store::is_valid_name(run_id) {
        return Ok(usage(&format!("--retry-failed: bad run id {run_id:?}")));
    }
    let old_dir = opts.shared_dir.join(run_id);
    let old = RemoteSpec::load(&old_dir).with_context(|| format!("run {run_id}"))?;
    let jobs: Vec<Job> = old
        .jobs
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            remote::load_result(&old_dir, *i).is_none_or(|r| !r.outcome.status.success())
        })
        .map(|(_, j)| j.clone())
        .collect();
    if jobs.is_empty() {
        println!("run {run_id}: no failed jobs");
        return Ok(ExitCode::SUCCESS);
    }
    let spec = RemoteSpec {
        id: runs::new_run_id(SystemTime::now()),
        jobs,
        retry_of: Some(run_id.to_owned()),
        ..old
    };
    let start = SystemTime::now();
    let done = slurm::submit(&spec, &opts)?;
    record(ctx, &spec, &done, start);
    Ok(report(&done))
}

/// Keep the run in the submitting store for `portroot runs`; a failure to
/// is a warning (the run itself is done and in the shared directory).
fn record(ctx: &Ctx, spec: &RemoteSpec, done: &SlurmRun, start: SystemTime) {
    let ok = done
        .results
        .iter()
        .filter(|r| r.outcome.status.success())
        .count();
    let state = if done.signal.is_some() {
        "interrupted"
    } else if ok == done.results.len() {
        "ok"
    } else {
        "failed"
    };
    let rec = remote::SlurmRunRecord {
        id: done.id.clone(),
        dir: done.dir.clone(),
        job_id: done.job_id.clone(),
        start: start
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        stage: spec.stage.as_str().to_owned(),
        tree: spec.trees.first().map_or_else(String::new, |t| {
            format!("{} {}", t.reference, &t.commit[..t.commit.len().min(10)])
        }),
        jobs: done.results.len(),
        ok,
        state: state.into(),
        retry_of: spec.retry_of.clone(),
    };
    if let Err(e) = remote::save_record(ctx.store.root(), &rec) {
        eprintln!(
            "portroot: warning: run {} not recorded for `portroot runs`: {e:#}",
            rec.id
        );
    }
}

/// `portroot run-task DIR INDEX`, on a node.
pub fn run_task(ctx: &Ctx, args: RunTaskArgs) -> anyhow::Result<ExitCode> {
    let node = Node {
        store: ctx.store.clone(),
        main_repo: ctx.main_repo(),
        mount: super::run::mount_options(ctx),
    };
    let ok = task::run_task(&node, &args.dir, args.index)?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("portroot: {msg}");
    ExitCode::from(2)
}

/// Print the table (the local run's columns and the node) and say how the
/// run ended.
fn report(done: &SlurmRun) -> ExitCode {
    let rows: Vec<super::run::Row> = done
        .results
        .iter()
        .map(|r| super::run::Row::new(&r.outcome, Some(&r.node)))
        .collect();
    super::run::print_rows(&rows, true, &done.dir);
    if let Some(sig) = done.signal {
        eprintln!(
            "portroot: interrupted: run {} stopped, array job {} cancelled",
            done.id, done.job_id
        );
        return ExitCode::from(u8::try_from(128 + sig).unwrap_or(1));
    }
    let failed = done
        .results
        .iter()
        .filter(|r| !r.outcome.status.success())
        .count();
    if failed > 0 {
        eprintln!(
            "portroot: {failed} of {} jobs failed; rerun them with --retry-failed {}",
            done.results.len(),
            done.id
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
