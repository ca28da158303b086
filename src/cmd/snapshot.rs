//! `portroot snapshot ...`: import, list and diff portage snapshots.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use portroot::snapshot::diff::{diff_tags, SnapshotDiff};
use portroot::snapshot::tag::SnapshotDate;
use portroot::snapshot::{self, ImportLock, ImportOptions, Outcome};
use portroot::store::{is_valid_name, DEFAULT_REPO};

use super::Ctx;

/// Snapshot subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Verify a snapshot tarball and import it as one commit and tag.
    #[command(after_help = IMPORT_HELP)]
    Import(ImportArgs),
    /// List the snapshot tags, oldest first: date, commit, file count.
    #[command(
        after_help = "Example:\n  portroot snapshot list\n  2026-08-19  3f2a9c1  130812 files\n  2026-08-20  b71d04e  130836 files"
    )]
    List(RepoArg),
    /// Show which packages and ebuilds changed between two snapshot tags.
    #[command(after_help = DIFF_HELP)]
    Diff(DiffArgs),
}

const IMPORT_HELP: &str = "\
The tarball (.tar.xz, .tar.bz2, .tar.gz, .tar.zst or .tar, recognised by content)
is streamed straight into git objects, nothing is extracted. Its top directory is
stripped; the root .git and .gitignore are left out. The tag is the first field
of metadata/timestamp.x minus one day, as YYYY-MM-DD. FILE.md5sum is checked when
it exists, FILE.gpgsig when a keyring is given. Bad input changes nothing.

Examples:
  portroot snapshot import gentoo-20260821.tar.xz
  portroot snapshot import --keyring /usr/share/openpgp-keys/gentoo-release.asc gentoo-20260821.tar.xz
  portroot snapshot import --date 2026-08-20 --no-verify my-tree.tar.zst";

const DIFF_HELP: &str = "\
Example:
  portroot snapshot diff 2026-08-19 2026-08-20
  packages: 2 added, 1 removed, 14 changed
  + dev-python/new-thing
  - app-misc/old-thing
  ~ sys-apps/portage
  ebuilds: 3 added, 1 removed, 2 changed
  + sys-apps/portage-3.0.70
  ...";

/// `--repo NAME`.
#[derive(Debug, Args)]
pub struct RepoArg {
    /// The snapshot repository in the store (repos/NAME.git) [default: the
    /// config's `repo`, else gentoo].
    #[arg(long, value_name = "NAME")]
    repo: Option<String>,
}

impl RepoArg {
    /// The repository name: the flag, else the config's, else gentoo.
    fn name(&self, ctx: &Ctx) -> anyhow::Result<String> {
        let name = self
            .repo
            .as_deref()
            .or(ctx.config.merged.repo.as_deref())
            .unwrap_or(DEFAULT_REPO);
        check_repo_name(name)?;
        Ok(name.to_owned())
    }
}

/// Arguments of `snapshot import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The snapshot tarball, e.g. gentoo-20260821.tar.xz.
    file: PathBuf,
    #[command(flatten)]
    repo: RepoArg,
    /// The md5 sum file to check against (default: FILE.md5sum if it exists).
    #[arg(long, value_name = "FILE")]
    md5sum: Option<PathBuf>,
    /// Check the detached signature FILE.gpgsig with gpgv against this keyring
    /// [default: the config's `keyring`; none: no signature check].
    #[arg(long, value_name = "FILE")]
    keyring: Option<PathBuf>,
    /// Skip the md5 and signature checks.
    #[arg(long, conflicts_with_all = ["md5sum", "keyring"])]
    no_verify: bool,
    /// Import a snapshot older than the newest one.
    #[arg(long)]
    allow_older: bool,
    /// Replace a tag that exists with a different tree.
    #[arg(long)]
    force: bool,
    /// The snapshot date, for tarballs without metadata/timestamp.x (overrides it).
    #[arg(long, value_name = "YYYY-MM-DD")]
    date: Option<String>,
    /// Fail instead of waiting when another import holds the repository.
    #[arg(long)]
    no_wait: bool,
}

/// Arguments of `snapshot diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The older tag.
    old: String,
    /// The newer tag.
    new: String,
    #[command(flatten)]
    repo: RepoArg,
    /// Only counts, no names.
    #[arg(long)]
    stat: bool,
}

/// Run a snapshot subcommand.
pub fn run(ctx: &Ctx, cmd: SnapshotCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        SnapshotCmd::Import(a) => import(ctx, a),
        SnapshotCmd::List(a) => list(ctx, a),
        SnapshotCmd::Diff(a) => diff(ctx, a),
    }
}

fn check_repo_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(is_valid_name(name), "invalid repository name {name:?}");
    Ok(())
}

fn import(ctx: &Ctx, a: ImportArgs) -> anyhow::Result<ExitCode> {
    let repo = a.repo.name(ctx)?;
    let date = a
        .date
        .as_deref()
        .map(str::parse::<SnapshotDate>)
        .transpose()?;
    if a.no_verify {
        eprintln!(
            "portroot: warning: --no-verify: neither md5 sum nor signature of {} is checked",
            a.file.display()
        );
    }
    let opts = ImportOptions {
        file: a.file.clone(),
        repo,
        md5sum: a.md5sum,
        // A configured keyring makes signatures required, as --keyring does;
        // only --no-verify turns that off.
        keyring: match a.no_verify {
            true => None,
            false => a.keyring.or_else(|| ctx.config.merged.keyring.clone()),
        },
        verify: !a.no_verify,
        allow_older: a.allow_older,
        force: a.force,
        date,
        progress: ctx.progress(),
    };
    let lock = ImportLock::acquire(&ctx.store, &opts.repo, !a.no_wait, |lock| {
        eprintln!(
            "portroot: waiting for another import into {} (lock {})",
            opts.repo,
            lock.display()
        );
    })?;
    let outcome = snapshot::import_snapshot(&ctx.store, &opts, &lock)
        .with_context(|| format!("importing {}", a.file.display()))?;
    match outcome {
        Outcome::NoNewer { date, commit } => {
            println!(
                "no newer snapshot: {date} is already imported (commit {})",
                short(commit)
            );
        }
        Outcome::Imported(i) => {
            let mut note = String::new();
            if i.replaced {
                note.push_str(", replaced the old tag");
            }
            if !i.moved_main {
                note.push_str(", older than main: main unmoved");
            }
            println!(
                "imported {}: commit {}, {} files, {:.1} MB in {:.1} s{note}",
                i.date,
                short(i.commit),
                i.files,
                i.bytes as f64 / 1e6,
                i.elapsed.as_secs_f64()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list(ctx: &Ctx, a: RepoArg) -> anyhow::Result<ExitCode> {
    let repo = a.name(ctx)?;
    let tags = snapshot::list_snapshots(&ctx.store, &repo)?;
    for t in tags {
        let files = t.files.map_or_else(|| "?".to_owned(), |f| f.to_string());
        println!("{}  {}  {files} files", t.name, short(t.commit));
    }
    Ok(ExitCode::SUCCESS)
}

fn diff(ctx: &Ctx, a: DiffArgs) -> anyhow::Result<ExitCode> {
    let name = a.repo.name(ctx)?;
    let repo = snapshot::open_repo(&ctx.store, &name)?;
    let d = diff_tags(&repo, &name, &a.old, &a.new)?;
    print!("{}", render_diff(&d, a.stat));
    Ok(ExitCode::SUCCESS)
}

/// The text `snapshot diff` prints.
fn render_diff(d: &SnapshotDiff, stat: bool) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let section = |s: &mut String,
                   what: &str,
                   added: &std::collections::BTreeSet<String>,
                   removed: &std::collections::BTreeSet<String>,
                   changed: &std::collections::BTreeSet<String>| {
        let _ = writeln!(
            s,
            "{what}: {} added, {} removed, {} changed",
            added.len(),
            removed.len(),
            changed.len()
        );
        if !stat {
            for (sign, set) in [('+', added), ('-', removed), ('~', changed)] {
                for name in set {
                    let _ = writeln!(s, "{sign} {name}");
                }
            }
        }
    };
    section(
        &mut s,
        "packages",
        &d.packages_added,
        &d.packages_removed,
        &d.packages_changed,
    );
    section(
        &mut s,
        "ebuilds",
        &d.ebuilds_added,
        &d.ebuilds_removed,
        &d.ebuilds_changed,
    );
    let _ = writeln!(s, "eclass: {} files changed", d.eclass_files);
    let _ = writeln!(s, "profiles: {} files changed", d.profile_files);
    let _ = writeln!(s, "other: {} files changed", d.other_files);
    s
}

fn short(oid: git2::Oid) -> String {
    oid.to_string()[..7].to_owned()
}
