//! `portroot run`, `shell`, `ps`, `gc` and the hidden sandbox helper: their
//! arguments, how flags and the configuration make a run's [`Settings`], and
//! the printing. The run itself (pinning, namespace, mounts, pool, teardown)
//! is [`portroot::run`].

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use portroot::run::{self, Finished, Outcome, Settings};
use portroot_runner::cgroup::{self, Cpus, Limits};
use portroot_runner::job::{self, Job, JobOutcome, JobStatus};
use portroot_runner::plan::TmpfsMount;
use portroot_runner::pool::Event;
use portroot_runner::run::{self as runs, RunRecord};
use portroot_runner::sandbox::{self, SandboxSpec};

use portroot::config::{choice, Feature, MirrorUrl, Network, TreeLayout};

use super::Ctx;

/// What every chroot of a run or shell is made of.
#[derive(Debug, Args)]
pub struct ChrootArgs {
    /// A further git repository of the store and the ref to serve, mounted
    /// read-only at /var/db/repos/NAME with its own repos.conf section.
    #[arg(long = "repo-ref", value_name = "NAME=REF")]
    repo_refs: Vec<String>,
    /// Where the tree goes: /var/db/repos/gentoo or /usr/portage [default:
    /// the config's `run.layout`, else modern].
    #[arg(long, value_name = "LAYOUT", value_parser = choice::<TreeLayout>())]
    layout: Option<TreeLayout>,
    /// `none`: a network namespace with only loopback [default: the config's
    /// `run.network`, else host].
    #[arg(long, value_name = "NETWORK", value_parser = choice::<Network>())]
    network: Option<Network>,
    /// URL written as the `local` mirror (fetch-restricted files) [default:
    /// the config's `run.local_mirror`].
    #[arg(long, value_name = "URL")]
    local_mirror: Option<MirrorUrl>,
    /// FEATURES words added after portroot's own, e.g. "getbinpkg -sandbox"
    /// [default: the config's `run.features`].
    #[arg(long, value_name = "WORDS", allow_hyphen_values = true)]
    features: Option<String>,
    /// A line appended to make.conf; repeat for more. Replaces the config's
    /// `run.make_conf_lines`.
    #[arg(
        long = "make-conf",
        value_name = "LINE",
        allow_hyphen_values = true,
        value_parser = parse_make_conf_line
    )]
    make_conf_lines: Vec<String>,
    /// The host directory shared as DISTDIR [default: the config's
    /// `run.distfiles`, else STORE/distfiles].
    #[arg(long, value_name = "DIR")]
    distfiles: Option<PathBuf>,
    /// One host directory shared as PKGDIR by every job and run, instead of
    /// a new binhost generation per run [default: the config's
    /// `run.binpkgs`, else none: generations of the binhost `binpkgs`].
    #[arg(long, value_name = "DIR")]
    binpkgs: Option<PathBuf>,
    /// A layer (`portroot layer list`) stacked over the stage; repeat in the
    /// order they were built, bottom first: the last one named is on top.
    #[arg(long = "layer", value_name = "LAYER")]
    pub(super) layers: Vec<String>,
    /// Memory each job may use, RAM and swap together (e.g. 4G); a job
    /// killed for it ends as `oom` [default: the config's `run.memory`,
    /// else unlimited].
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    memory: Option<u64>,
    /// CPUs' worth of time each job may use, fractions allowed (e.g. 1.5)
    /// [default: the config's `run.cpus`, else unlimited].
    #[arg(long, value_name = "N", value_parser = Cpus::parse)]
    cpus: Option<Cpus>,
    /// Processes and threads each job may have at once [default: the
    /// config's `run.pids`, else unlimited].
    #[arg(long, value_name = "N", value_parser = parse_pids)]
    pids: Option<u64>,
    /// A fresh tmpfs over this directory of every job, with its owner and
    /// mode, e.g. `/var/tmp/portage=8G` for builds in RAM; repeat for more.
    /// Replaces the config's `run.tmpfs`.
    #[arg(long = "tmpfs", value_name = "PATH[=SIZE]", value_parser = portroot::config::parse_tmpfs)]
    tmpfs: Vec<TmpfsMount>,
}

/// `--memory`: a size, at least 1M.
fn parse_memory(s: &str) -> Result<u64, String> {
    portroot::config::parse_size(s).and_then(cgroup::check_memory)
}

/// `--pids`: 1 to the kernel's largest pid count.
fn parse_pids(s: &str) -> Result<u64, String> {
    let n: u64 = s.trim().parse().map_err(|_| format!("bad number {s:?}"))?;
    cgroup::check_pids(n)
}

/// Arguments of `portroot run`.
#[derive(Debug, Args)]
#[command(after_help = "\
Each job runs `bash --login -c SCRIPT` with only HOME and TERM set, in its own
overlay chroot over the stage, with the tree at TAG read-only, the store's
distfiles/ shared read-write (DISTDIR) and, as PKGDIR, a new generation of the
binhost (STORE/binpkgs unless --binhost), made from its `current` by hard
links and published by --publish or `portroot binhost publish` (--binpkgs DIR:
one shared PKGDIR instead). `portroot shell` reads `current`, read-only.

Examples:
  portroot run --stage stage4 --tag 2026-08-20 -- emerge -e world
  portroot run --stage stage4 --tag 2026-08-20 -- 'emerge -e world && eclean-pkg'
  printf 'bash\\temerge -1 app-shells/bash\\n' | portroot run --stage stage4 --tag 2026-08-20 --job-file -
  portroot run --stage stage4 --tag 2026-08-20 --repeat 8 --network none --keep -- make check
  portroot run --stage stage4 --layer python --layer sci --tag 2026-08-20 -- emerge -1 numpy")]
pub struct RunArgs {
    /// The stage (name or digest) the chroots are layered over.
    #[arg(long, value_name = "STAGE", required_unless_present = "retry_failed")]
    pub(super) stage: Option<String>,
    /// The snapshot tag served at the portage tree location.
    #[arg(long, value_name = "TAG", required_unless_present = "retry_failed")]
    pub(super) tag: Option<String>,
    /// Who runs the jobs: this machine, or one Slurm array job (see the
    /// config's [slurm]) [default: the config's `run.scheduler`, else local].
    #[arg(long, value_enum)]
    pub(super) scheduler: Option<portroot::config::Scheduler>,
    /// With --scheduler slurm: where a node lacking the stage fetches it
    /// (http, https or file), checked against the stage's sha256.
    #[arg(long, value_name = "URL")]
    pub(super) stage_url: Option<String>,
    /// With --scheduler slurm: where a node lacking layer NAME fetches its
    /// `layer export` file, checked against the sha256 the export recorded;
    /// repeat per layer.
    #[arg(long = "layer-url", value_name = "NAME=URL")]
    pub(super) layer_urls: Vec<String>,
    /// Run again, through Slurm, only the jobs of Slurm run RUN-ID that did
    /// not succeed, with the same pinned inputs.
    #[arg(long, value_name = "RUN-ID", conflicts_with_all = ["stage", "tag", "job_file", "repeat", "command"])]
    pub(super) retry_failed: Option<String>,
    #[command(flatten)]
    pub(super) chroot: ChrootArgs,
    /// How many chroots run at once [default: the config's `run.jobs`, else
    /// the number of CPUs].
    #[arg(long, short = 'j', value_name = "N", value_parser = at_least_one())]
    jobs: Option<usize>,
    /// Run the command as N jobs named 1..N.
    #[arg(long, value_name = "N", conflicts_with = "job_file", value_parser = at_least_one())]
    repeat: Option<usize>,
    /// One job per line, `NAME<TAB>COMMAND`; `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    job_file: Option<PathBuf>,
    /// Keep each job's chroot for `portroot shell --run ID --job NAME`.
    #[arg(long)]
    pub(super) keep: bool,
    /// Write the packages into a new generation of this binhost (a name
    /// under the store, or an absolute directory), made from its `current`
    /// by hard links (`portroot binhost`) [default: the config's
    /// `run.binhost`, else `binpkgs`; none with --binpkgs].
    #[arg(
        long,
        value_name = "NAME|DIR",
        value_parser = portroot::store::parse_binhost,
        conflicts_with = "binpkgs"
    )]
    pub(super) binhost: Option<PathBuf>,
    /// Publish the run's generation if every job succeeded and nothing was
    /// refused (with no binhost given or configured: the store's `binpkgs`).
    #[arg(long, conflicts_with = "binpkgs")]
    pub(super) publish: bool,
    /// The command: one word is a shell line, several are quoted and joined.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Arguments of `portroot shell`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  portroot shell --stage stage4 --tag 2026-08-20
  portroot shell --run 20261124-123456-ab12 --job 3")]
pub struct ShellArgs {
    /// The stage (name or digest) the chroot is layered over.
    #[arg(long, value_name = "STAGE", required_unless_present = "run")]
    stage: Option<String>,
    /// The snapshot tag served at the portage tree location.
    #[arg(long, value_name = "TAG", required_unless_present = "run")]
    tag: Option<String>,
    #[command(flatten)]
    chroot: ChrootArgs,
    /// Re-enter a job kept by `portroot run --keep`.
    #[arg(long, value_name = "RUN-ID", requires = "job", conflicts_with_all = ["stage", "tag"])]
    run: Option<String>,
    /// The job of `--run` to enter.
    #[arg(long, value_name = "NAME", requires = "run")]
    job: Option<String>,
}

/// Hidden helpers re-executed by the runner.
#[derive(Debug, Subcommand)]
pub enum InternalCmd {
    /// Set up one chroot from SPEC and run its shell (single-threaded).
    Sandbox {
        /// The JSON spec written by the runner.
        spec: PathBuf,
    },
}

/// The chroots' settings: each a flag, else the configuration, else the
/// built-in default.
pub(super) fn settings(ctx: &Ctx, args: &ChrootArgs) -> anyhow::Result<Settings> {
    let conf = &ctx.config.merged.run;
    let features = match &args.features {
        Some(words) => words
            .split_whitespace()
            .map(str::parse::<Feature>)
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("--features: {e}"))?,
        None => conf.features.clone().unwrap_or_default(),
    };
    // Relative directories are taken from where the command runs; the
    // config's are absolute by construction.
    let dir = |flag: &Option<PathBuf>, what: &str| -> anyhow::Result<Option<PathBuf>> {
        flag.as_deref()
            .map(std::path::absolute)
            .transpose()
            .with_context(|| format!("resolving --{what}"))
    };
    Ok(Settings {
        layout: args.layout.or(conf.layout).unwrap_or(TreeLayout::Modern),
        network: args.network.or(conf.network).unwrap_or(Network::Host),
        local_mirror: args
            .local_mirror
            .clone()
            .or_else(|| conf.local_mirror.clone()),
        features,
        make_conf_lines: if args.make_conf_lines.is_empty() {
            conf.make_conf_lines.clone().unwrap_or_default()
        } else {
            args.make_conf_lines.clone()
        },
        distfiles: dir(&args.distfiles, "distfiles")?
            .or_else(|| conf.distfiles.clone())
            .unwrap_or_else(|| ctx.store.distfiles_dir()),
        binpkgs: dir(&args.binpkgs, "binpkgs")?
            .or_else(|| conf.binpkgs.clone())
            .unwrap_or_else(|| ctx.store.binpkgs_dir()),
        binhost: false,
        main_repo: ctx.main_repo(),
        limits: limits(ctx, args),
        tmpfs: if args.tmpfs.is_empty() {
            conf.tmpfs.clone().unwrap_or_default()
        } else {
            args.tmpfs.clone()
        },
        layers: args.layers.clone(),
        repo_refs: args.repo_refs.clone(),
        mount: mount_options(ctx),
    })
}

/// Each job's limits: flags, else the configuration, else none.
fn limits(ctx: &Ctx, args: &ChrootArgs) -> Limits {
    let conf = &ctx.config.merged.run;
    Limits {
        memory: args.memory.or(conf.memory),
        cpus: args.cpus.or(conf.cpus),
        pids: args.pids.or(conf.pids),
    }
}

/// How a run mounts its trees: the configured `mount.cache_size`,
/// `mount.threads` and `mount.io_uring`.
pub(super) fn mount_options(ctx: &Ctx) -> portroot_fs::MountOptions {
    let conf = &ctx.config.merged.mount;
    super::mount::options(conf.cache_size, conf.threads, conf.io_uring)
}

pub(super) fn read_jobs(args: &RunArgs) -> anyhow::Result<Vec<Job>> {
    if let Some(file) = &args.job_file {
        if !args.command.is_empty() {
            bail!("give either --job-file or a command after --, not both");
        }
        let text = if file == Path::new("-") {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading jobs from standard input")?;
            s
        } else {
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
        };
        return Ok(job::parse_job_file(&text, file)?);
    }
    let script = job::script_from_words(&args.command)?;
    match args.repeat {
        Some(0) => bail!("--repeat must be at least 1"),
        Some(n) => Ok(job::repeated(&script, n)),
        None => Ok(vec![Job {
            name: "1".into(),
            script,
        }]),
    }
}

/// `portroot run` on this machine (`cmd::slurm::run` picks the scheduler).
pub fn run(ctx: &Ctx, args: RunArgs) -> anyhow::Result<ExitCode> {
    let (Some(stage), Some(tag)) = (&args.stage, &args.tag) else {
        bail!("give --stage and --tag");
    };
    if args.stage_url.is_some() {
        eprintln!("portroot: --stage-url is for --scheduler slurm: a local run uses the stage in the store");
        return Ok(ExitCode::from(2));
    }
    if !args.layer_urls.is_empty() {
        eprintln!("portroot: --layer-url is for --scheduler slurm: a local run uses the layers in the store");
        return Ok(ExitCode::from(2));
    }
    let jobs = read_jobs(&args)?;
    let workers = args
        .jobs
        .or(ctx.config.merged.run.jobs.map(std::num::NonZeroUsize::get))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let batch = Batch {
        stage,
        tag,
        chroot: &args.chroot,
        jobs,
        workers,
        keep: args.keep,
        binhost: binhost(ctx, &args.chroot, args.binhost.as_ref(), args.publish),
        publish: args.publish,
    };
    run_batch(ctx, batch, &mut |_| Ok(()))
}

/// The binhost of generations a run writes into: `--binhost`, else none
/// with `--binpkgs` (one shared PKGDIR, the escape hatch), else the config's
/// `run.binhost`, else the store's `binpkgs` unless the config's
/// `run.binpkgs` names a shared PKGDIR (which `--publish` still overrides).
pub(super) fn binhost(
    ctx: &Ctx,
    chroot: &ChrootArgs,
    flag: Option<&PathBuf>,
    publish: bool,
) -> Option<PathBuf> {
    let conf = &ctx.config.merged.run;
    match (flag, &chroot.binpkgs) {
        (Some(b), _) => Some(b.clone()),
        (None, Some(_)) => None,
        (None, None) => conf.binhost.clone().or_else(|| {
            (conf.binpkgs.is_none() || publish)
                .then(|| PathBuf::from(portroot::store::DEFAULT_BINHOST))
        }),
    }
}

/// The jobs of one run, from `run`'s command line or made up by `layer create`.
pub(super) struct Batch<'a> {
    /// The stage as the user named it.
    pub stage: &'a str,
    /// The main tree's tag.
    pub tag: &'a str,
    /// Everything else the chroots are made of.
    pub chroot: &'a ChrootArgs,
    /// The jobs.
    pub jobs: Vec<Job>,
    /// How many run at once.
    pub workers: usize,
    /// `--keep`.
    pub keep: bool,
    /// `--binhost` (or the default one `--publish` implies).
    pub binhost: Option<PathBuf>,
    /// `--publish`.
    pub publish: bool,
}

/// Run `batch` as `portroot run` does, with a progress bar, and print its
/// table; `finish` sees the jobs' chroots before they are removed (`layer
/// create` takes the upper directory from there).
pub(super) fn run_batch(
    ctx: &Ctx,
    batch: Batch<'_>,
    finish: &mut dyn FnMut(Finished<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    let mut settings = settings(ctx, batch.chroot)?;
    if let Some(spec) = &batch.binhost {
        settings.binpkgs = ctx.store.binhost_dir(spec);
        settings.binhost = true;
    }
    let pinned = run::pin(&ctx.store, batch.stage, batch.tag, &settings)?;
    let jobs = run::Batch {
        jobs: batch.jobs,
        workers: batch.workers,
        keep: batch.keep,
        publish: batch.publish,
    };
    let bar = progress_bar(ctx, jobs.jobs.len());
    let (mut running, mut failed) = (0usize, 0usize);
    let mut observe = |ev: &Event| {
        match ev {
            Event::Started(_) => running += 1,
            Event::Finished(o) => {
                if o.status != JobStatus::Cancelled {
                    running = running.saturating_sub(1);
                }
                if !o.status.success() {
                    failed += 1;
                }
                if let Some(bar) = &bar {
                    bar.inc(1);
                }
            }
        }
        if let Some(bar) = &bar {
            bar.set_message(format!("running {running}, failed {failed}"));
        }
    };
    let outcome = run::execute(&ctx.store, pinned, jobs, &mut observe, finish)?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    report(outcome)
}

/// Print a finished run's table and refusals; its exit code, or the error
/// that kept it from ending clean.
fn report(outcome: Outcome) -> anyhow::Result<ExitCode> {
    print_table(&outcome.outcomes, &outcome.path);
    print_refused(&outcome.record);
    print_generation(&outcome);
    if let Some(e) = outcome.teardown_error {
        return Err(e);
    }
    if let Some(e) = outcome.binhost_error {
        return Err(e);
    }
    if let Some(sig) = outcome.signal {
        eprintln!("portroot: interrupted: run {} stopped", outcome.id);
        return Ok(ExitCode::from(u8::try_from(128 + sig).unwrap_or(1)));
    }
    let (failed, total) = (outcome.failed(), outcome.outcomes.len());
    if failed > 0 {
        eprintln!("portroot: {failed} of {total} jobs failed");
        return Ok(ExitCode::from(1));
    }
    let refused = outcome.record.refused.len();
    if refused > 0 {
        eprintln!("portroot: {refused} file(s) refused from the binhost");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// The run's binhost generation: what it built and whether it was published.
fn print_generation(outcome: &Outcome) {
    let Some(gen) = &outcome.record.binhost else {
        return;
    };
    let built = gen.built.clone().unwrap_or_default();
    println!(
        "generation {} in {}: {} added, {} rebuilt, {} removed; {}",
        gen.generation,
        gen.root.display(),
        built.added.len(),
        built.rebuilt.len(),
        built.removed.len(),
        if outcome.published {
            "published"
        } else {
            "not published"
        }
    );
}

/// One line per file refused from the binhost, after the table.
fn print_refused(record: &RunRecord) {
    let pkgdir = record.pkgdir();
    for r in &record.refused {
        let was = pkgdir.map_or_else(|| r.path.clone(), |p| p.join(&r.path));
        eprintln!(
            "portroot: refused {}: {}; moved to {}",
            was.display(),
            r.reason,
            r.moved_to.display()
        );
    }
}

fn progress_bar(ctx: &Ctx, total: usize) -> Option<indicatif::ProgressBar> {
    if !ctx.progress() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    let style = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {pos}/{len} done, {msg}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

fn print_table(outcomes: &[JobOutcome], run_path: &Path) {
    let rows: Vec<Row> = outcomes.iter().map(|o| Row::new(o, None)).collect();
    print_rows(&rows, false, run_path);
}

/// One line of a run's table.
pub(super) struct Row([String; 7]);

impl Row {
    /// The job's line; `node` only for runs on other machines.
    pub(super) fn new(o: &JobOutcome, node: Option<&str>) -> Row {
        let log = if o.log.as_os_str().is_empty() {
            "-".to_owned()
        } else {
            o.log.display().to_string()
        };
        Row([
            o.name.clone(),
            o.status.to_string(),
            runs::seconds(o.duration),
            o.usage.cpu.map_or_else(|| "-".into(), runs::seconds),
            o.usage.peak_memory.map_or_else(|| "-".into(), runs::bytes),
            node.unwrap_or("-").to_owned(),
            log,
        ])
    }
}

/// Print `rows` under their header, the NODE column only `with_node`, and
/// the run's directory.
pub(super) fn print_rows(rows: &[Row], with_node: bool, run_path: &Path) {
    let header = Row(["JOB", "STATUS", "SECONDS", "CPU", "PEAK", "NODE", "LOG"].map(String::from));
    let mut widths = header.0.clone().map(|h| h.len());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(&row.0) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(rows) {
        let r = &row.0;
        let node = if with_node {
            format!("{:<w$}  ", r[5], w = widths[5])
        } else {
            String::new()
        };
        println!(
            "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {:>w4$}  {node}{}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[6],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
        );
    }
    println!("run {}", run_path.display());
}

/// `portroot shell`.
pub fn shell(ctx: &Ctx, args: ShellArgs) -> anyhow::Result<ExitCode> {
    let shell = if let (Some(id), Some(job)) = (&args.run, &args.job) {
        run::reenter(
            &ctx.store,
            id,
            job,
            limits(ctx, &args.chroot),
            mount_options(ctx),
        )?
    } else {
        let (Some(stage), Some(tag)) = (&args.stage, &args.tag) else {
            bail!("give --stage and --tag, or --run and --job");
        };
        let settings = settings(ctx, &args.chroot)?;
        let mut pinned = run::pin(&ctx.store, stage, tag, &settings)?;
        if let Some(spec) = binhost(ctx, &args.chroot, None, false) {
            shell_reads_current(&ctx.store.binhost_dir(&spec), &mut pinned.caches)?;
        }
        run::Shell::fresh(&ctx.store, pinned)?
    };
    let code = shell.run()?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// A shell's PKGDIR with a binhost of generations: what clients see (the
/// generation `current` names, or with none yet the binhost's own top, which
/// the first run's generation will be linked from), read-only. A shell is
/// typed by hand and recorded nowhere, so nothing built in it may reach
/// clients; `--binpkgs DIR` gives it a writable PKGDIR of its own.
fn shell_reads_current(
    root: &Path,
    caches: &mut [portroot_runner::plan::Bind],
) -> anyhow::Result<()> {
    let host = portroot_runner::binhost::Binhost::new(root);
    let source = match host.current()? {
        Some(id) => host.path(&id),
        None => root.to_owned(),
    };
    for bind in caches {
        if bind.target == Path::new(portroot_runner::conf::PKGDIR) {
            bind.source = source.clone();
            bind.writable = false;
        }
    }
    Ok(())
}

/// Hidden helpers.
pub fn internal(_ctx: &Ctx, cmd: InternalCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        InternalCmd::Sandbox { spec } => {
            let spec = SandboxSpec::load(&spec)?;
            match sandbox::run(&spec) {
                Ok(code) => Ok(ExitCode::from(u8::try_from(code).unwrap_or(1))),
                Err(e) => {
                    // The runner tells "could not set up" from a job's own
                    // failure by this status; the reason goes to the job's log.
                    eprintln!("portroot sandbox: {:#}", anyhow::Error::from(e));
                    Ok(ExitCode::from(sandbox::SETUP_FAILED as u8))
                }
            }
        }
    }
}

/// clap's value parser for `--make-conf`: one line (see
/// [`portroot::config::check_make_conf_line`]).
fn parse_make_conf_line(line: &str) -> Result<String, String> {
    portroot::config::check_make_conf_line(line).map(|()| line.to_owned())
}

/// clap's value parser for a count that must be at least 1 (a usage error,
/// exit 2, otherwise).
pub fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}
