//! `portroot run`, `shell`, `ps`, `gc` and the hidden sandbox helper.
//!
//! `run` works in this order, so that a bad argument leaves nothing behind and
//! a killed runner leaves no mount:
//!
//! 1. check everything the user gave (stage and its `/bin/bash`, tag, repos,
//!    job file) before touching the store;
//! 2. while still single-threaded, `unshare(CLONE_NEWNS)` and make `/`
//!    recursively private: every mount the run makes lives in this namespace
//!    and dies with the process, even on SIGKILL;
//! 3. block SIGINT/SIGTERM before any thread exists and hand them to one
//!    thread that kills the jobs; create `runs/<id>/` (locked) and mount each
//!    tree once with the fs crate;
//! 4. run the pool: each worker starts `/proc/self/exe internal sandbox SPEC`
//!    per job (see `portroot_runner::sandbox`);
//! 5. unmount, remove the chroots (unless `--keep`), record the outcomes,
//!    print the table.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use portroot_runner::caches::{self, Refused};
use portroot_runner::cgroup::{self, Cpus, Limits, RunCgroup};
use portroot_runner::conf::{ChrootConf, RepoConf};
use portroot_runner::job::{self, Job, JobOutcome, JobStatus};
use portroot_runner::layer::{LayerLease, LayerStore};
use portroot_runner::plan::{Bind, TmpfsMount};
use portroot_runner::pool::{self, Event};
use portroot_runner::run::{self as runs, Children, Helper, RunDir, RunRecord, TreeRecord};
use portroot_runner::sandbox::{self, Network, SandboxSpec};
use portroot_runner::stage::{StageLease, StageStore};
use tracing::info;

use portroot::config::{Layout, NetworkArg};

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
    #[arg(long, value_enum)]
    layout: Option<Layout>,
    /// `none`: a network namespace with only loopback [default: the config's
    /// `run.network`, else host].
    #[arg(long, value_enum)]
    network: Option<NetworkArg>,
    /// URL written as the `local` mirror (fetch-restricted files) [default:
    /// the config's `run.local_mirror`].
    #[arg(long, value_name = "URL")]
    local_mirror: Option<String>,
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
    /// The host directory shared as PKGDIR, where binary packages land
    /// [default: the config's `run.binpkgs`, else STORE/binpkgs].
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
overlay chroot over the stage, with the tree at TAG read-only and the store's
distfiles/ and binpkgs/ shared read-write (DISTDIR, PKGDIR).

Examples:
  portroot run --stage stage4 --tag 2026-08-20 -- emerge -e world
  portroot run --stage stage4 --tag 2026-08-20 -- 'emerge -e world && eclean-pkg'
  printf 'bash\\temerge -1 app-shells/bash\\n' | portroot run --stage stage4 --tag 2026-08-20 --job-file -
  portroot run --stage stage4 --tag 2026-08-20 --repeat 8 --network none --keep -- make check
  portroot run --stage stage4 --layer python --layer sci --tag 2026-08-20 -- emerge -1 numpy")]
pub struct RunArgs {
    /// The stage (name or digest) the chroots are layered over.
    #[arg(long, value_name = "STAGE")]
    stage: String,
    /// The snapshot tag served at the portage tree location.
    #[arg(long, value_name = "TAG")]
    tag: String,
    #[command(flatten)]
    chroot: ChrootArgs,
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
    keep: bool,
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

/// Arguments of `portroot ps`.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  portroot ps")]
pub struct PsArgs {}

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

/// Hidden helpers re-executed by the runner.
#[derive(Debug, Subcommand)]
pub enum InternalCmd {
    /// Set up one chroot from SPEC and run its shell (single-threaded).
    Sandbox {
        /// The JSON spec written by the runner.
        spec: PathBuf,
    },
}

/// Everything resolved from [`ChrootArgs`] before the store is touched.
struct Resolved {
    stage_name: String,
    stage: StageLease,
    /// The `--layer`s, held so `layer rm` refuses them meanwhile.
    layers: LayerLease,
    trees: Vec<TreeRecord>,
    caches: Vec<Bind>,
    conf: ChrootConf,
    network: Network,
    limits: Limits,
    tmpfs: Vec<TmpfsMount>,
}

/// DISTDIR and PKGDIR inside the chroot. They stay under /var/cache with the
/// usr-portage layout too: /usr/portage is the read-only tree, so nothing can
/// be bound below it.
const DISTDIR: &str = "/var/cache/distfiles";
const PKGDIR: &str = "/var/cache/binpkgs";

fn resolve(
    ctx: &Ctx,
    stage_name: &str,
    tag: &str,
    args: &ChrootArgs,
    run_dir: &Path,
) -> anyhow::Result<Resolved> {
    let (stage_name, tag) = (stage_name.to_owned(), tag.to_owned());
    let defaults = chroot_defaults(ctx, args)?;
    let stage = lease_stage(ctx, &stage_name)?;
    sandbox::check_shell(&stage.stage.rootfs).with_context(|| format!("stage {stage_name}"))?;
    let layers = lease_layers(ctx, &stage.stage.digest, &args.layers)?;

    let main_target = match defaults.layout {
        Layout::Modern => PathBuf::from("/var/db/repos/gentoo"),
        Layout::UsrPortage => PathBuf::from("/usr/portage"),
    };
    let mut wanted = vec![("gentoo".to_owned(), tag, main_target)];
    for spec in &args.repo_refs {
        let Some((name, reference)) = spec.split_once('=') else {
            bail!("--repo-ref {spec}: expected NAME=REF");
        };
        if name == "gentoo" || !portroot::store::is_valid_name(name) || reference.is_empty() {
            bail!("--repo-ref {spec}: expected NAME=REF with a repository name other than gentoo");
        }
        if wanted.iter().any(|(n, _, _)| n == name) {
            bail!("--repo-ref {spec}: repository {name} given twice");
        }
        wanted.push((
            name.to_owned(),
            reference.to_owned(),
            PathBuf::from("/var/db/repos").join(name),
        ));
    }
    let mut trees = Vec::new();
    for (name, reference, target) in wanted {
        // The main tree is `gentoo` inside the chroot whichever store
        // repository (the config's `repo`) holds it.
        let git_dir = match name.as_str() {
            "gentoo" => ctx.store.repo_path(&defaults.main_repo),
            _ => ctx.store.repo_path(&name),
        };
        check_ref(&git_dir, &name, &reference)?;
        trees.push(TreeRecord {
            mountpoint: run_dir.join("repos").join(&name),
            name,
            git_dir,
            reference,
            target,
        });
    }
    let conf = ChrootConf {
        repos: trees
            .iter()
            .map(|t| RepoConf {
                name: t.name.clone(),
                location: t.target.clone(),
            })
            .collect(),
        distdir: DISTDIR.into(),
        pkgdir: PKGDIR.into(),
        local_mirror: defaults.local_mirror,
        resolv_conf: None,
        features: defaults.features,
        make_conf_lines: defaults.make_conf_lines,
    };
    let caches = vec![
        Bind {
            source: defaults.distfiles,
            target: DISTDIR.into(),
            writable: true,
        },
        Bind {
            source: defaults.binpkgs,
            target: PKGDIR.into(),
            writable: true,
        },
    ];
    Ok(Resolved {
        stage_name,
        stage,
        layers,
        trees,
        caches,
        conf,
        network: match defaults.network {
            NetworkArg::Host => Network::Host,
            NetworkArg::None => Network::None,
        },
        limits: defaults.limits,
        tmpfs: defaults.tmpfs,
    })
}

/// The chroot settings a flag, else the configuration, else the built-in
/// default decides.
struct ChrootDefaults {
    layout: Layout,
    network: NetworkArg,
    local_mirror: Option<String>,
    features: Vec<String>,
    make_conf_lines: Vec<String>,
    distfiles: PathBuf,
    binpkgs: PathBuf,
    /// The store repository served as the gentoo tree.
    main_repo: String,
    limits: Limits,
    tmpfs: Vec<TmpfsMount>,
}

fn chroot_defaults(ctx: &Ctx, args: &ChrootArgs) -> anyhow::Result<ChrootDefaults> {
    let conf = &ctx.config.merged.run;
    let features = match &args.features {
        Some(words) => {
            let words: Vec<String> = words.split_whitespace().map(str::to_owned).collect();
            for w in &words {
                portroot::config::check_feature(w)
                    .map_err(|e| anyhow::anyhow!("--features: {e}"))?;
            }
            words
        }
        None => conf.features.clone().unwrap_or_default(),
    };
    if let Some(url) = &args.local_mirror {
        portroot::config::check_url(url).map_err(|e| anyhow::anyhow!("--local-mirror: {e}"))?;
    }
    // Relative directories are taken from where the command runs; the
    // config's are absolute by construction.
    let dir = |flag: &Option<PathBuf>, what: &str| -> anyhow::Result<Option<PathBuf>> {
        flag.as_deref()
            .map(std::path::absolute)
            .transpose()
            .with_context(|| format!("resolving --{what}"))
    };
    Ok(ChrootDefaults {
        layout: args.layout.or(conf.layout).unwrap_or(Layout::Modern),
        network: args.network.or(conf.network).unwrap_or(NetworkArg::Host),
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
        main_repo: ctx
            .config
            .merged
            .repo
            .clone()
            .unwrap_or_else(|| portroot::store::DEFAULT_REPO.to_owned()),
        limits: limits(ctx, args),
        tmpfs: if args.tmpfs.is_empty() {
            conf.tmpfs.clone().unwrap_or_default()
        } else {
            args.tmpfs.clone()
        },
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

/// The run's cgroup `portroot/<id>` under ours, with each job's `limits`
/// checked against the controllers there are.
fn run_cgroup(id: &str, limits: Limits) -> anyhow::Result<RunCgroup> {
    let hierarchies = cgroup::detect_hierarchies()?;
    Ok(RunCgroup::create(&hierarchies, id, limits)?)
}

/// Fail early, with one line, if `reference` does not exist in the repository.
fn check_ref(git_dir: &Path, name: &str, reference: &str) -> anyhow::Result<()> {
    let repo = git2::Repository::open_bare(git_dir).map_err(|_| {
        anyhow::anyhow!("no repository {name} in the store ({})", git_dir.display())
    })?;
    let found = repo
        .revparse_single(&format!("refs/tags/{reference}"))
        .or_else(|_| repo.revparse_single(reference))
        .and_then(|o| o.peel_to_tree());
    if found.is_err() {
        bail!("no tag or ref {reference} in repository {name}");
    }
    Ok(())
}

/// Make every mount of this process private to it: called first, while the
/// process is still single-threaded (unshare(CLONE_NEWNS) requires it).
pub(super) fn private_mount_namespace() -> anyhow::Result<()> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("creating the run's mount namespace (are you root?)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making / private in the run's mount namespace")?;
    Ok(())
}

/// The shared DISTDIR and PKGDIR (the store's unless configured), created
/// on first use. A new DISTDIR is made `root:portage` mode 2775, as Gentoo
/// ships `/var/cache/distfiles`: with FEATURES=userfetch portage fetches as
/// the portage user, and otherwise chmods the directory itself on its first
/// fetch. A directory that already exists is the user's and left alone.
fn ensure_caches(resolved: &Resolved) -> anyhow::Result<()> {
    for bind in &resolved.caches {
        let dir = &bind.source;
        if bind.target == Path::new(DISTDIR) {
            caches::create_distdir(dir)?;
        } else {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    Ok(())
}

/// Refuse what the run left in PKGDIR that a binhost must not serve: move it
/// into `runs/<id>/refused/` (see [`print_refused`]).
fn check_binhost(record: &RunRecord, run_dir: &RunDir) -> anyhow::Result<Vec<Refused>> {
    let Some(pkgdir) = record
        .caches
        .iter()
        .find(|b| b.target == Path::new(PKGDIR))
        .map(|b| &b.source)
    else {
        return Ok(Vec::new());
    };
    Ok(caches::check_pkgdir(pkgdir, &run_dir.path.join("refused"))?)
}

/// One line per refused file, after the table.
fn print_refused(record: &RunRecord) {
    let pkgdir = record.caches.iter().find(|b| b.target == Path::new(PKGDIR));
    for r in &record.refused {
        let was = pkgdir.map_or_else(|| r.path.clone(), |b| b.source.join(&r.path));
        eprintln!(
            "portroot: refused {}: {}; moved to {}",
            was.display(),
            r.reason,
            r.moved_to.display()
        );
    }
}

/// Mount every tree of the run (in this process, in its private namespace),
/// with the configured `mount.cache_size`, `mount.threads` and `mount.io_uring`.
fn mount_trees(ctx: &Ctx, trees: &[TreeRecord]) -> anyhow::Result<Vec<TreeMount>> {
    let defaults = portroot_fs::MountOptions::default();
    let conf = &ctx.config.merged.mount;
    let opts = portroot_fs::MountOptions {
        cache_bytes: conf.cache_size.unwrap_or(defaults.cache_bytes),
        threads: conf.threads.map_or(defaults.threads, usize::from),
        io_uring: conf
            .io_uring
            .map_or(defaults.io_uring, portroot::config::IoUringArg::fs),
        ..defaults
    };
    let mut mounted = Vec::new();
    for t in trees {
        std::fs::create_dir_all(&t.mountpoint)
            .with_context(|| format!("creating {}", t.mountpoint.display()))?;
        mounted.push(mount_tree(t, &opts)?);
    }
    Ok(mounted)
}

/// Lease the stage the chroots are layered over for as long as the value
/// lives, so `stage rm` cannot pull it from under the overlays.
fn lease_stage(ctx: &Ctx, name_or_digest: &str) -> anyhow::Result<StageLease> {
    Ok(StageStore::new(ctx.store.stages_dir(), ctx.store.tmp_dir()).lease(name_or_digest)?)
}

/// Lease the `--layer`s (bottom first) over the stage `digest`, checking
/// that they were built over it in this order.
fn lease_layers(ctx: &Ctx, digest: &str, names: &[String]) -> anyhow::Result<LayerLease> {
    Ok(LayerStore::new(ctx.store.layers_dir(), ctx.store.tmp_dir()).lease(digest, names)?)
}

/// A tree mounted for the run; dropping it unmounts.
type TreeMount = portroot_fs::MountedFs;

fn mount_tree(t: &TreeRecord, opts: &portroot_fs::MountOptions) -> anyhow::Result<TreeMount> {
    // The defaults otherwise: allow_other (portage reads as uid 250) and
    // auto_unmount. The run's private namespace already takes the mount along
    // if we die; the fs crate's own teardown is written for auto_unmount mode.
    portroot_fs::mount(
        &t.git_dir,
        portroot_fs::View::Ref(t.reference.clone()),
        &t.mountpoint,
        opts,
    )
    .with_context(|| format!("mounting {} at {}", t.name, t.reference))
}

fn helper() -> Helper {
    Helper {
        program: PathBuf::from("/proc/self/exe"),
        args: vec!["internal".into(), "sandbox".into()],
    }
}

fn read_jobs(args: &RunArgs) -> anyhow::Result<Vec<Job>> {
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

/// `portroot run`.
pub fn run(ctx: &Ctx, args: RunArgs) -> anyhow::Result<ExitCode> {
    let jobs = read_jobs(&args)?;
    let workers = args
        .jobs
        .or(ctx.config.merged.run.jobs.map(std::num::NonZeroUsize::get))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let batch = Batch {
        stage: &args.stage,
        tag: &args.tag,
        chroot: &args.chroot,
        jobs,
        workers,
        keep: args.keep,
    };
    run_batch(ctx, batch, &mut |_| Ok(()))
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
}

/// What [`run_batch`] hands its caller once every job ended and the trees are
/// unmounted, before the chroots are removed.
pub(super) struct Finished<'a> {
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

/// Run `batch` as `portroot run` does; `finish` sees the jobs' chroots before
/// they are removed (`layer create` takes the upper directory from there).
pub(super) fn run_batch(
    ctx: &Ctx,
    batch: Batch<'_>,
    finish: &mut dyn FnMut(Finished<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let Batch {
        jobs,
        workers,
        keep,
        ..
    } = batch;
    let id = runs::new_run_id(SystemTime::now());
    let runs_dir = ctx.store.runs_dir();
    let resolved = resolve(
        ctx,
        batch.stage,
        batch.tag,
        batch.chroot,
        &runs_dir.join(&id),
    )?;
    if workers == 0 {
        bail!("--jobs must be at least 1");
    }

    private_mount_namespace()?;
    let cgroups = run_cgroup(&id, resolved.limits)?;
    ensure_caches(&resolved)?;
    let mut record = run_record(
        &id,
        &resolved,
        keep,
        jobs.iter().map(|j| j.name.clone()).collect(),
    );
    record.cgroups = cgroups.paths();
    // Before any thread exists (the FUSE sessions start some), so that every
    // thread inherits the blocked mask and only ours sees the signals.
    let cancel = Arc::new(AtomicBool::new(false));
    let signal = Arc::new(AtomicI32::new(0));
    let children = Arc::new(Children::default());
    handle_signals(cancel.clone(), signal.clone(), children.clone())?;
    let run_dir = RunDir::create(&runs_dir, &record)?;
    let mounts = match mount_trees(ctx, &record.trees) {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&run_dir.path);
            return Err(e);
        }
    };
    info!(run = %id, jobs = jobs.len(), workers, "run started");

    let term = std::env::var("TERM").ok();
    let helper = helper();
    let total = jobs.len();
    let bar = progress_bar(ctx, total);
    let (mut running, mut failed) = (0usize, 0usize);
    let outcomes = pool::run(
        jobs,
        workers,
        &cancel,
        |job| {
            let cg = Some(&cgroups);
            runs::execute_job(&run_dir, &record, &helper, &children, cg, job, term.clone())
        },
        |ev| {
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
        },
    );
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    drop(mounts);
    // Every job's group is gone already; the run's goes before the record
    // says the run ended.
    drop(cgroups);
    let mut cleanup_err = None;
    if let Err(e) = std::fs::remove_dir_all(run_dir.path.join("repos")) {
        cleanup_err.get_or_insert(anyhow::Error::from(e).context("removing the tree mount points"));
    }
    let finish_err = finish(Finished {
        run_dir: &run_dir,
        record: &record,
        outcomes: &outcomes,
        interrupted: &|| signal.load(Ordering::SeqCst) != 0,
    })
    .err();
    let keep = keep && signal.load(Ordering::SeqCst) == 0;
    for o in &outcomes {
        let dir = run_dir.job(&o.name);
        if !keep {
            if let Err(e) = runs::remove_chroot(&dir) {
                cleanup_err.get_or_insert(e.into());
            }
        }
    }
    let refused = check_binhost(&record, &run_dir);
    record.outcomes = Some(outcomes.clone());
    record.refused = refused.as_ref().map_or_else(|_| Vec::new(), Clone::clone);
    run_dir.save(&record)?;
    print_table(&outcomes, &run_dir.path);
    print_refused(&record);
    let nfailed = outcomes.iter().filter(|o| !o.status.success()).count();
    info!(run = %id, jobs = total, failed = nfailed, refused = record.refused.len(), secs = started.elapsed().as_secs_f64(), "run finished");
    if let Some(e) = finish_err.or(cleanup_err) {
        return Err(e);
    }
    let refused = refused.context("checking the binhost")?;
    let sig = signal.load(Ordering::SeqCst);
    if sig != 0 {
        eprintln!("portroot: interrupted: run {id} stopped");
        return Ok(ExitCode::from(u8::try_from(128 + sig).unwrap_or(1)));
    }
    if nfailed > 0 {
        eprintln!("portroot: {nfailed} of {total} jobs failed");
        return Ok(ExitCode::from(1));
    }
    if !refused.is_empty() {
        eprintln!(
            "portroot: {} file(s) refused from the binhost",
            refused.len()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
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
    let rows: Vec<[String; 6]> = outcomes
        .iter()
        .map(|o| {
            let log = if o.log.as_os_str().is_empty() {
                "-".to_owned()
            } else {
                o.log.display().to_string()
            };
            [
                o.name.clone(),
                o.status.to_string(),
                runs::seconds(o.duration),
                o.usage.cpu.map_or_else(|| "-".into(), runs::seconds),
                o.usage.peak_memory.map_or_else(|| "-".into(), runs::bytes),
                log,
            ]
        })
        .collect();
    let header = ["JOB", "STATUS", "SECONDS", "CPU", "PEAK", "LOG"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        println!(
            "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {:>w4$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
        );
    }
    println!("run {}", run_path.display());
}

/// What `run.json` records of a run about to start.
fn run_record(id: &str, resolved: &Resolved, keep: bool, jobs: Vec<String>) -> RunRecord {
    RunRecord {
        id: id.to_owned(),
        pid: std::process::id(),
        args: std::env::args().collect(),
        start: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        stage: resolved.stage_name.clone(),
        layers: resolved
            .layers
            .lowers_top_first()
            .into_iter()
            .chain([resolved.stage.stage.rootfs.clone()])
            .collect(),
        layer_names: resolved
            .layers
            .layers
            .iter()
            .map(|l| l.record.name.clone())
            .collect(),
        stage_digest: resolved.stage.stage.digest.clone(),
        trees: resolved.trees.clone(),
        caches: resolved.caches.clone(),
        conf: resolved.conf.clone(),
        network: resolved.network,
        keep,
        jobs,
        limits: resolved.limits,
        tmpfs: resolved.tmpfs.clone(),
        cgroups: Vec::new(),
        outcomes: None,
        refused: Vec::new(),
    }
}

/// `portroot shell`.
pub fn shell(ctx: &Ctx, args: ShellArgs) -> anyhow::Result<ExitCode> {
    let runs_dir = ctx.store.runs_dir();
    let term = std::env::var("TERM").ok();
    let (run_dir, record, job, remove_after, cgroups, _leases) =
        if let (Some(id), Some(job)) = (&args.run, &args.job) {
            let (run_dir, record) = RunDir::reopen(&runs_dir, id)?;
            if !record.jobs.contains(job) {
                bail!("run {id} has no job {job}");
            }
            if !run_dir.job(job).upper().is_dir() {
                bail!("run {id} did not keep job {job} (run it with --keep)");
            }
            let stage = lease_stage(ctx, &record.stage_digest)?;
            let layers = lease_layers(ctx, &record.stage_digest, &record.layer_names)?;
            private_mount_namespace()?;
            let cgroups = run_cgroup(id, limits(ctx, &args.chroot))?;
            (
                run_dir,
                record,
                job.clone(),
                false,
                cgroups,
                (stage, layers),
            )
        } else {
            let id = runs::new_run_id(SystemTime::now());
            let (Some(stage), Some(tag)) = (&args.stage, &args.tag) else {
                bail!("give --stage and --tag, or --run and --job");
            };
            let resolved = resolve(ctx, stage, tag, &args.chroot, &runs_dir.join(&id))?;
            private_mount_namespace()?;
            let cgroups = run_cgroup(&id, resolved.limits)?;
            ensure_caches(&resolved)?;
            let mut record = run_record(&id, &resolved, false, vec!["shell".into()]);
            record.cgroups = cgroups.paths();
            (
                RunDir::create(&runs_dir, &record)?,
                record,
                "shell".to_owned(),
                true,
                cgroups,
                (resolved.stage, resolved.layers),
            )
        };
    let result = (|| -> anyhow::Result<i32> {
        // Like system(3): the terminal's Ctrl-C and Ctrl-\ are for the shell
        // inside, not for us. Blocked before the FUSE threads start, so they
        // inherit it; the helper resets its mask.
        use nix::sys::signal::{SigSet, Signal};
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGQUIT);
        set.thread_block().context("blocking SIGINT and SIGQUIT")?;
        let _mounts = mount_trees(ctx, &record.trees)?;
        let dir = run_dir.job(&job);
        for d in [dir.0.clone(), dir.upper(), dir.work(), dir.root()] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let group = cgroups.create_job(&job)?;
        let mut spec = record.spec(&dir, &job, sandbox::Command::Interactive, term);
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
    })();
    drop(cgroups);
    if remove_after {
        std::fs::remove_dir_all(&run_dir.path)
            .with_context(|| format!("removing {}", run_dir.path.display()))?;
    } else {
        let _ = std::fs::remove_dir_all(run_dir.path.join("repos"));
    }
    let code = result?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
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
