//! `portroot ps`, `runs` and `gc`: the runs the store keeps, live, finished
//! or left by a killed runner.

use std::process::ExitCode;

use clap::Args;
use portroot_runner::layer::LayerStore;
use portroot_runner::run as runs;
use portroot_runner::stage::StageStore;
use tracing::info;

use super::Ctx;

/// Arguments of `portroot ps`.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  portroot ps")]
pub struct PsArgs {}

/// Arguments of `portroot runs`.
#[derive(Debug, Args)]
#[command(after_help = "\
One line per run directory in the store, oldest first: its id, when it
started (UTC), the stage and the main tree's tag with the commit the run
pinned, how many jobs ended ok out of how many, whether its binhost
generation is published (`current`, `yes` once, `no`, or `-` when run
without --binhost), and its state: `live` (running now), `ok`, `failed`,
`interrupted` (stopped before every job ran) or `dead` (the runner was
killed; `portroot gc` removes it). Runs stay until `portroot gc --all`.
Runs submitted to Slurm from this store follow, their state with the
array's job id and the shared run directory (kept in slurm-runs/).

Examples:
  portroot runs
  portroot runs --json | jq '.[] | select(.state == \"failed\") | .id'")]
pub struct RunsArgs {
    /// Print one JSON array of the runs' records (run.json) with their
    /// state, instead of the table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `portroot report`.
#[derive(Debug, Args)]
#[command(after_help = "\
Every run writes runs/ID/index.html when it ends: one static page, no network
needed, with the summary (state, command, the stage digest, layers and the
commit of every tree), the job table with durations as bars, the packages
written into PKGDIR, anything refused from the binhost, and each job's log
(its end inline, the whole file linked). This writes it again from run.json
(for a run made before reports existed) and prints its path.

Examples:
  portroot report 20261206-204609-8e36
  xdg-open $(portroot report 20261206-204609-8e36)")]
pub struct ReportArgs {
    /// The run's id (`portroot runs` lists them).
    #[arg(value_name = "RUN-ID", value_parser = portroot::store::parse_name)]
    id: String,
}

/// Arguments of `portroot gc`.
#[derive(Debug, Args)]
#[command(after_help = "\
Removes runs whose runner died (SIGKILL, power loss). Finished runs keep their
logs (and --keep chroots) until `gc --all`.

Example:
  portroot gc --all")]
pub struct GcArgs {
    /// Also remove finished runs (their logs and kept chroots).
    #[arg(long)]
    all: bool,
}

/// `portroot ps`.
pub fn ps(ctx: &Ctx, _args: PsArgs) -> anyhow::Result<ExitCode> {
    let live: Vec<_> = runs::list_runs(&ctx.store.runs_dir())?
        .into_iter()
        .filter(|r| r.live)
        .collect();
    if live.is_empty() {
        if !ctx.quiet {
            eprintln!("no live runs");
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<22}  {:>8}  {:>5}  {:<16}  STAGE",
        "RUN", "PID", "JOBS", "STARTED"
    );
    for r in live {
        let (pid, jobs, start, stage) = match &r.record {
            Some(rec) => (
                rec.pid.to_string(),
                rec.jobs.len().to_string(),
                runs::utc_stamp(rec.start),
                rec.stage.clone(),
            ),
            None => ("?".into(), "?".into(), "?".into(), "?".into()),
        };
        println!("{:<22}  {pid:>8}  {jobs:>5}  {start:<16}  {stage}", r.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// `portroot runs`.
pub fn runs(ctx: &Ctx, args: RunsArgs) -> anyhow::Result<ExitCode> {
    let mut all = runs::list_runs(&ctx.store.runs_dir())?;
    // Ids start with the second a run started; within one second, the lock
    // file's time (made with the directory, never written) orders them.
    all.sort_by_cached_key(|r| {
        let made = std::fs::metadata(r.path.join("lock"))
            .and_then(|m| m.modified())
            .ok();
        (r.record.as_ref().map(|rec| rec.start), made, r.id.clone())
    });
    let slurm_runs = portroot::run::remote::load_records(ctx.store.root());
    if args.json {
        let items: Vec<serde_json::Value> = all
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id,
                    "state": run_state(r),
                    "published": published(r),
                    "record": r.record,
                })
            })
            .chain(slurm_runs.iter().map(|r| {
                serde_json::json!({
                    "id": r.id,
                    "state": r.state,
                    "scheduler": "slurm",
                    "record": r,
                })
            }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() && slurm_runs.is_empty() {
        if !ctx.quiet {
            eprintln!("no runs");
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<22}  {:<16}  {:<16}  {:<24}  {:>7}  {:<9}  STATE",
        "RUN", "STARTED", "STAGE", "TAG", "OK/JOBS", "PUBLISHED"
    );
    for r in &all {
        let (start, stage, tag, jobs) = match &r.record {
            Some(rec) => (
                runs::utc_stamp(rec.start),
                rec.stage.clone(),
                rec.trees.first().map_or_else(String::new, |t| {
                    let commit = t.commit.as_deref().map_or("", |c| &c[..c.len().min(10)]);
                    format!("{} {commit}", t.reference).trim_end().to_owned()
                }),
                match &rec.outcomes {
                    Some(o) => format!(
                        "{}/{}",
                        o.iter().filter(|o| o.status.success()).count(),
                        rec.jobs.len()
                    ),
                    None => format!("-/{}", rec.jobs.len()),
                },
            ),
            None => ("?".into(), "?".into(), "?".into(), "?".into()),
        };
        println!(
            "{:<22}  {start:<16}  {stage:<16}  {tag:<24}  {jobs:>7}  {:<9}  {}",
            r.id,
            published(r),
            run_state(r)
        );
    }
    print_slurm_runs(&slurm_runs);
    Ok(ExitCode::SUCCESS)
}

/// The rows of the Slurm runs submitted from this store, after the local
/// ones: the same columns, the state with the array and its directory.
fn print_slurm_runs(slurm_runs: &[portroot::run::remote::SlurmRunRecord]) {
    for r in slurm_runs {
        println!(
            "{:<22}  {:<16}  {:<16}  {:<24}  {:>7}  {:<9}  {} (slurm {}, {})",
            r.id,
            runs::utc_stamp(r.start),
            &r.stage[..r.stage.len().min(12)],
            r.tree,
            format!("{}/{}", r.ok, r.jobs),
            "-",
            r.state,
            r.job_id,
            r.dir.display()
        );
    }
}

/// Whether the run's binhost generation is published: `current` (served
/// now), `yes` (published once), `no`, or `-` (the run made none).
fn published(r: &runs::RunInfo) -> &'static str {
    let Some(gen) = r.record.as_ref().and_then(|rec| rec.binhost.as_ref()) else {
        return "-";
    };
    let host = portroot_runner::binhost::Binhost::new(&gen.root);
    if host.current().ok().flatten().as_ref() == Some(&gen.generation) {
        "current"
    } else if host
        .meta(&gen.generation)
        .is_ok_and(|m| m.published.is_some())
    {
        "yes"
    } else {
        "no"
    }
}

/// `live`, `ok`, `failed`, `interrupted` or `dead`, as `runs` shows it.
fn run_state(r: &runs::RunInfo) -> &'static str {
    if r.live {
        return "live";
    }
    r.record
        .as_ref()
        .and_then(|rec| rec.ended())
        .unwrap_or("dead")
}

/// `portroot report`.
pub fn report(ctx: &Ctx, args: ReportArgs) -> anyhow::Result<ExitCode> {
    let dir = ctx.store.runs_dir().join(&args.id);
    if !dir.is_dir() {
        anyhow::bail!(
            "no run {} in the store (`portroot runs` lists them)",
            args.id
        );
    }
    let record = runs::read_record(&dir)?;
    let path = portroot::report::write(&dir, &record).map_err(|e| {
        anyhow::anyhow!(
            "writing {}: {e}",
            dir.join(portroot::report::REPORT).display()
        )
    })?;
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// `portroot gc`.
pub fn gc(ctx: &Ctx, args: GcArgs) -> anyhow::Result<ExitCode> {
    let report = runs::gc(&ctx.store.runs_dir(), args.all)?;
    for id in &report.removed {
        info!(run = %id, "removed");
    }
    // A killed `snapshot import`, `sync`, `fetch`, `stage add` or
    // `stage export` (named by PID), first: an export's scratch directory
    // names the file it left beside its output, which the lock-based
    // collections below would not look at.
    let scratch_leftovers = ctx.store.remove_dead_scratch();
    // A killed `stage add` or `stage rm` leaves its scratch directory in tmp/.
    let stage_leftovers =
        StageStore::new(ctx.store.stages_dir(), ctx.store.tmp_dir()).collect_garbage()?;
    // Likewise a killed `layer create` (while committing) or `layer rm`.
    let layer_leftovers =
        LayerStore::new(ctx.store.layers_dir(), ctx.store.tmp_dir()).collect_garbage()?;
    if !ctx.quiet {
        eprintln!(
            "removed {} run(s), {stage_leftovers} stage, {layer_leftovers} layer and {scratch_leftovers} other interrupted command leftover(s); {} live, {} finished kept",
            report.removed.len(),
            report.live,
            report.kept
        );
    }
    Ok(ExitCode::SUCCESS)
}
