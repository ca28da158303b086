//! `portroot demo`: the whole build-server workflow on built-in data, offline.
//!
//! It makes a small but real snapshot history (three dated `gentoo-YYYYMMDD.tar.xz`
//! tarballs shaped like the mirrors', with profiles, eclasses, ebuilds, Manifests
//! and md5-cache) and a minimal real stage tarball (the host's bash and env with
//! the libraries they link, plus busybox when the host has it), then drives the
//! real subcommands, each as its own `portroot` process exactly as a user would
//! type it: import the snapshots, list and diff them, mount every tag side by
//! side, add the stage, build a layer (a software stack's own files) over it,
//! run N jobs in parallel chroots over stage and layer that each read the tree
//! at a tag and write a binary package into PKGDIR. It prints each step with its
//! time, and removes its throwaway store at the end unless `--keep`.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use portroot::fixture::portage::{pack_snapshot, PortageTree};
use portroot::fixture::stage::StageTarball;
use portroot_runner::archive::Compression;

use super::Ctx;

/// Arguments of `portroot demo`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    sudo portroot demo                      # throwaway store, removed afterwards\n  \
    sudo portroot demo --jobs 8 --keep      # keep the store to look around\n  \
    sudo portroot --store /tmp/pr demo      # an explicit, empty store")]
pub struct DemoArgs {
    /// How many build jobs to run in parallel chroots.
    #[arg(short, long, default_value_t = 4, value_name = "N", value_parser = super::run::at_least_one())]
    pub jobs: usize,

    /// Keep the demo store (and print where it is) instead of removing it.
    #[arg(long)]
    pub keep: bool,
}

/// How many dated snapshots the demo makes.
const SNAPSHOTS: u32 = 3;

/// `portroot demo`.
pub fn demo(ctx: &Ctx, args: DemoArgs) -> anyhow::Result<ExitCode> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the demo mounts FUSE filesystems and overlays and creates namespaces: run it as root"
        );
    }
    let (store, throwaway) = demo_store(ctx)?;
    let result = run_demo(&store, &args);
    if throwaway.is_some() && !args.keep {
        // Everything the demo mounted was unmounted by the commands themselves;
        // a mount left behind would make this removal fail loudly, not silently.
        if let Err(err) = fs::remove_dir_all(&store) {
            eprintln!(
                "portroot: warning: could not remove the demo store {}: {err}",
                store.display()
            );
        }
    } else {
        println!("\nThe store is kept at {}", store.display());
        println!(
            "  look around:  portroot --store {} snapshot list",
            store.display()
        );
        if let Some(report) = run_report(&store) {
            println!("  the run's report, for a browser:  {}", report.display());
        }
    }
    if throwaway.is_some() && !args.keep && result.is_ok() {
        println!("\nEvery run leaves a report page (runs/<id>/index.html): `portroot demo --keep` keeps this one to open.");
    }
    result.map(|()| ExitCode::SUCCESS)
}

/// The store to use: the `--store` the user gave (which must be empty or
/// missing, so the demo never mixes its data into a real store), else a fresh
/// directory that is removed afterwards.
fn demo_store(ctx: &Ctx) -> anyhow::Result<(PathBuf, Option<()>)> {
    if ctx.store_given {
        let root = ctx.store.root().to_path_buf();
        let empty = match fs::read_dir(&root) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
        };
        if !empty {
            bail!(
                "the demo needs an empty store, and {} is not empty (leave out --store for a throwaway one)",
                root.display()
            );
        }
        fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        return Ok((root, None));
    }
    let dir = tempfile::Builder::new()
        .prefix("portroot-demo-")
        .tempdir_in(std::env::temp_dir())
        .context("creating a throwaway demo store")?;
    Ok((dir.keep(), Some(())))
}

fn run_demo(store: &Path, args: &DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let work = store.join("demo-input");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    println!("portroot demo: store {}\n", store.display());

    let tarballs = make_snapshots(&work)?;
    let oldest = import_snapshots(store, &tarballs)?;
    mount_every_tag(store)?;
    add_stage(store, &work)?;
    create_layer(store, &oldest)?;
    let pkgdir = run_jobs(store, args, &oldest)?;
    show_results(store, args, &pkgdir)?;

    println!(
        "\nDone in {:.1} s. Job logs are under {}/runs/*/*/log.",
        started.elapsed().as_secs_f64(),
        store.display()
    );
    Ok(())
}

/// Step 1: three dated snapshots, as the mirrors publish them.
fn make_snapshots(work: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let t = Instant::now();
    let mut tree = PortageTree::small(2026);
    let mut tarballs = Vec::new();
    for _ in 0..SNAPSHOTS {
        let dir = work.join(format!("tree-{}", tree.day));
        tree.write_tree(&dir)
            .with_context(|| format!("writing the demo tree {}", dir.display()))?;
        let tarball = pack_snapshot(&dir, &tree.snapshot_stem(), Compression::Xz, work)
            .with_context(|| format!("packing {}", dir.display()))?;
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        tarballs.push(tarball);
        tree = tree.next_day();
    }
    step(
        "made snapshot tarballs",
        t.elapsed(),
        &tarballs
            .iter()
            .map(|p| file_name(p))
            .collect::<Vec<_>>()
            .join(", "),
    );
    Ok(tarballs)
}

/// Step 2: import them, one commit and annotated tag per date: the oldest tag.
fn import_snapshots(store: &Path, tarballs: &[PathBuf]) -> anyhow::Result<String> {
    let t = Instant::now();
    for tarball in tarballs {
        portroot(store, ["snapshot", "import"])
            .arg(tarball)
            .status_ok()?;
    }
    step("imported into git", t.elapsed(), "repos/gentoo.git");
    portroot(store, ["snapshot", "list"]).status_ok()?;
    let tags = tag_names(store)?;
    let (oldest, newest) = match (tags.first(), tags.last()) {
        (Some(o), Some(n)) if tags.len() == SNAPSHOTS as usize => (o.clone(), n.clone()),
        _ => bail!("expected {SNAPSHOTS} snapshot tags after the import, found {tags:?}"),
    };
    println!("\nWhat changed from {oldest} to {newest}:");
    portroot(store, ["snapshot", "diff", "--stat"])
        .args([&oldest, &newest])
        .status_ok()?;
    Ok(oldest)
}

/// Step 3: every tag side by side, served from git objects.
fn mount_every_tag(store: &Path) -> anyhow::Result<()> {
    let mnt = store.join("demo-mnt");
    fs::create_dir_all(&mnt).with_context(|| format!("creating {}", mnt.display()))?;
    let t = Instant::now();
    portroot(store, ["mount", "--all"]).arg(&mnt).status_ok()?;
    let mounted = t.elapsed();
    let browse = browse_all_tags(&mnt);
    let unmounted = portroot(store, ["umount"]).arg(&mnt).status_ok();
    let listing = browse?;
    unmounted?;
    step("mounted every tag", mounted, &mnt.display().to_string());
    println!("{listing}");
    Ok(())
}

/// Step 4: the stage, unpacked once.
fn add_stage(store: &Path, work: &Path) -> anyhow::Result<()> {
    let t = Instant::now();
    let stage = StageTarball::build_from_host(work, Compression::Xz).context(
        "building the demo stage tarball from the host's bash (and busybox, if installed)",
    )?;
    portroot(store, ["stage", "add", "--name", "demo"])
        .arg(&stage)
        .status_ok()?;
    step("added the stage", t.elapsed(), &file_name(&stage));
    Ok(())
}

/// Step 5: a layer: one job's changes over the stage, kept read-only under a
/// name, as a software stack that several runs build on.
fn create_layer(store: &Path, oldest: &str) -> anyhow::Result<()> {
    let t = Instant::now();
    portroot(
        store,
        [
            "layer", "create", "stack", "--stage", "demo", "--tag", oldest,
        ],
    )
    .arg("--")
    .arg("echo 'CFLAGS_STACK=\"-O2 -pipe\" # the demo stack' > /etc/demo-stack.conf")
    .status_ok()?;
    step(
        "built layer stack over the stage",
        t.elapsed(),
        "layers/stack (portroot layer list)",
    );
    Ok(())
}

/// Step 6: `--jobs` jobs in parallel chroots over stage + layer at the older tag,
/// binary packages collected. Bash builtins only, so the job runs in a
/// stage holding nothing but bash. The directory of the packages.
fn run_jobs(store: &Path, args: &DemoArgs, oldest: &str) -> anyhow::Result<PathBuf> {
    let script = format!(
        "set -e; tree=/var/db/repos/gentoo; \
         echo \"job $HOSTNAME sees the tree of $(< $tree/metadata/timestamp.chk)\"; \
         n=0; for e in $tree/*/*/*.ebuild; do n=$((n+1)); done; echo \"$n ebuilds\"; \
         echo \"and the layer's $(< /etc/demo-stack.conf)\"; \
         echo \"built by job $HOSTNAME at tag {oldest}\" > /var/cache/binpkgs/pkg-$HOSTNAME-1.0.gpkg.tar"
    );
    // The run writes a generation of the store's binhost and publishes it
    // when every job succeeded: clients (and the demo) read `current`,
    // which holds only these packages (no `mkdir` in a bash-only stage).
    let pkgdir = store.join("binpkgs/current");
    let t = Instant::now();
    portroot(
        store,
        [
            "run", "--stage", "demo", "--layer", "stack", "--tag", oldest,
        ],
    )
    .args(["--jobs", &args.jobs.to_string()])
    .args(["--repeat", &args.jobs.to_string(), "--publish"])
    .arg("--")
    .arg(&script)
    .status_ok()?;
    step(
        &format!("ran {} jobs in parallel chroots", args.jobs),
        t.elapsed(),
        &format!("over stage demo + layer stack, at tag {oldest}"),
    );
    Ok(pkgdir)
}

/// The packages the jobs left, and what the first job printed.
fn show_results(store: &Path, args: &DemoArgs, pkgdir: &Path) -> anyhow::Result<()> {
    let mut packages: Vec<String> = fs::read_dir(pkgdir)
        .with_context(|| format!("reading {}", pkgdir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    packages.sort();
    if packages.len() != args.jobs {
        bail!(
            "expected {} binary packages in {}, found {}",
            args.jobs,
            pkgdir.display(),
            packages.len()
        );
    }
    println!("Binary packages collected in {}:", pkgdir.display());
    for p in &packages {
        println!("  {p}");
    }
    if let Some(log) = first_job_log(store) {
        println!("\nWhat job 1 printed ({}):", log.display());
        let text = fs::read_to_string(&log).unwrap_or_default();
        for line in text.lines() {
            println!("  {line}");
        }
    }
    Ok(())
}

/// The report page of the demo's parallel run (the one with the most jobs;
/// `layer create` is a run of one).
fn run_report(store: &Path) -> Option<PathBuf> {
    portroot_runner::run::list_runs(&store.join("runs"))
        .ok()?
        .into_iter()
        .max_by_key(|r| r.record.as_ref().map_or(0, |rec| rec.jobs.len()))
        .map(|r| r.path.join(portroot::report::REPORT))
        .filter(|page| page.is_file())
}

/// The log of job `1` of the (only) run in the demo store.
fn first_job_log(store: &Path) -> Option<PathBuf> {
    fs::read_dir(store.join("runs"))
        .ok()?
        .filter_map(Result::ok)
        .map(|run| run.path().join("1/log"))
        .find(|log| log.is_file())
}

/// List the all-tags view the way a person would look at it.
fn browse_all_tags(mnt: &Path) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut names: Vec<String> = fs::read_dir(mnt)
        .with_context(|| format!("reading {}", mnt.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    for name in names {
        let path = mnt.join(&name);
        if let Ok(target) = fs::read_link(&path) {
            out.push_str(&format!("  {name} -> {}\n", target.display()));
            continue;
        }
        let stamp = fs::read_to_string(path.join("metadata/timestamp.chk"))
            .with_context(|| format!("reading {}/metadata/timestamp.chk", path.display()))?;
        out.push_str(&format!("  {name}/  (timestamp.chk: {})\n", stamp.trim()));
    }
    Ok(out)
}

/// The snapshot tags, oldest first, from the repository itself.
fn tag_names(store: &Path) -> anyhow::Result<Vec<String>> {
    let repo_path = store.join("repos/gentoo.git");
    let repo = git2::Repository::open_bare(&repo_path)
        .with_context(|| format!("opening {}", repo_path.display()))?;
    let mut tags: Vec<String> = repo
        .tag_names(None)
        .with_context(|| format!("listing tags of {}", repo_path.display()))?
        .iter()
        .filter_map(|t| t.ok().flatten().map(str::to_owned))
        .collect();
    // Tags are YYYY-MM-DD, so the lexical order is the date order.
    tags.sort();
    Ok(tags)
}

fn step(what: &str, took: Duration, detail: &str) {
    println!(
        "\n== {what} in {:.0} ms: {detail}",
        took.as_secs_f64() * 1000.0
    );
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A `portroot` subcommand of this very binary, on the demo store.
fn portroot<I, S>(store: &Path, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("portroot"));
    let mut cmd = Command::new(exe);
    cmd.arg("--store")
        .arg(store)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("PORTROOT_STORE")
        // The demo shows built-in behaviour: a site keyring or layout must
        // not change (or break) it.
        .env_remove("PORTROOT_CONFIG")
        .env("PORTROOT_NO_CONFIG", "1");
    cmd
}

/// Running a child `portroot` and failing with its command line.
trait StatusOk {
    fn status_ok(&mut self) -> anyhow::Result<()>;
}

impl StatusOk for Command {
    fn status_ok(&mut self) -> anyhow::Result<()> {
        let shown: Vec<String> = self
            .get_args()
            .skip(2) // --store DIR
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let status = self
            .status()
            .with_context(|| format!("starting portroot {}", shown.join(" ")))?;
        if !status.success() {
            bail!("`portroot {}` failed ({status})", shown.join(" "));
        }
        Ok(())
    }
}
