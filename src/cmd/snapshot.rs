//! `portroot snapshot ...`: import, list and diff portage snapshots; sync them
//! from the mirrors, push and fetch them to and from a git server.

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
    /// Fetch the newest snapshot from the mirrors (as emerge-webrsync does) and import it.
    #[command(after_help = SYNC_HELP)]
    Sync(SyncArgs),
    /// Push main and every snapshot tag to a git remote (the team's mirror server).
    #[command(after_help = PUSH_HELP)]
    Push(RemoteArgs),
    /// Fetch main and every snapshot tag from a git remote into the store.
    #[command(after_help = FETCH_HELP)]
    Fetch(RemoteArgs),
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
    #[arg(long, value_name = "NAME", value_parser = portroot::store::parse_name)]
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
    /// Accept a snapshot stamped more than a day past this machine's clock
    /// (for a machine whose clock is behind).
    #[arg(long)]
    allow_future: bool,
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
        SnapshotCmd::Sync(a) => sync(ctx, a),
        SnapshotCmd::Push(a) => push(ctx, a),
        SnapshotCmd::Fetch(a) => fetch(ctx, a),
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
            a.file.display().to_string().escape_debug()
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
        allow_future: a.allow_future,
        date,
        progress: ctx.progress(),
    };
    super::signals::clean_up_on_signal(ctx, "unfinished import removed")?;
    let lock = lock(ctx, &opts.repo, !a.no_wait)?;
    let outcome = snapshot::import_snapshot(&ctx.store, &opts, &lock)
        .with_context(|| format!("importing {}", a.file.display()))?;
    match outcome {
        Outcome::NoNewer { date, commit } => {
            println!(
                "no newer snapshot: {date} is already imported (commit {})",
                short(commit)
            );
        }
        Outcome::Imported(i) => println!("{}", imported(&i, "")),
    }
    Ok(ExitCode::SUCCESS)
}

/// Take the repository's import lock; `wait` for it, saying so once, or
/// fail at once if another import holds it.
fn lock(ctx: &Ctx, repo: &str, wait: bool) -> anyhow::Result<ImportLock> {
    Ok(ImportLock::acquire(&ctx.store, repo, wait, |lock| {
        eprintln!(
            "portroot: waiting for another import into {repo} (lock {})",
            lock.display()
        );
    })?)
}

/// The line saying what an import or a sync added; `from` names the file
/// and mirror of a sync.
fn imported(i: &snapshot::Imported, from: &str) -> String {
    let mut note = String::new();
    if i.replaced {
        note.push_str(", replaced the old tag");
    }
    if !i.moved_main {
        note.push_str(", older than main: main unmoved");
    }
    format!(
        "imported {}: {from}commit {}, {} files, {:.1} MB in {:.1} s{note}",
        i.date,
        short(i.commit),
        i.files,
        i.bytes as f64 / 1e6,
        i.elapsed.as_secs_f64()
    )
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

const SYNC_HELP: &str = "\
Walks back from yesterday (UTC) one day at a time, up to --max-age-days, and
takes the first date a mirror has: MIRROR/snapshots/gentoo-YYYYMMDD.tar.xz, then
portage-YYYYMMDD.tar.xz, then the .tar.bz2 forms. If that snapshot is already
tagged it says \"no newer snapshot\" without downloading it. The .md5sum is
required, the .gpgsig too when a keyring is given. Mirrors are tried in order:
one that refuses, times out or serves a file failing verification is reported
on one line and the next one is tried. Mirrors are http(s) URLs, file:// URLs
or local paths; without --mirror, https://distfiles.gentoo.org. Downloads go
to the store's tmp/ and are removed afterwards, also on error or Ctrl-C.

Examples:
  portroot snapshot sync --keyring /usr/share/openpgp-keys/gentoo-release.asc
  portroot snapshot sync --mirror http://m1.example --mirror file:///srv/mirror
  portroot snapshot sync --mirror https://distfiles.gentoo.org --revert 20260815";

const PUSH_HELP: &str = "\
Local paths and file:// URLs are pushed with libgit2; other URLs (https, ssh)
with the git command line. A remote main that is not an ancestor of the local
main, or a tag naming different objects there, is refused unless --force.

Examples:
  portroot snapshot push /srv/git/gentoo.git
  portroot snapshot push git@mirror.example:gentoo-snapshots.git";

const FETCH_HELP: &str = "\
Creates the store's repository if it is missing. A remote main that does not
fast-forward the local main, or a tag naming different objects here, is
refused unless --force; nothing changes then.

Examples:
  portroot snapshot fetch /srv/git/gentoo.git
  portroot snapshot fetch https://mirror.example/git/gentoo-snapshots.git";

/// Arguments of `snapshot sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// A mirror: http(s) URL, file:// URL or local path, holding snapshots/
    /// (repeatable, tried in order) [default: the config's `mirrors`, else
    /// https://distfiles.gentoo.org].
    #[arg(long = "mirror", value_name = "URL")]
    mirrors: Vec<String>,
    #[command(flatten)]
    repo: RepoArg,
    /// Check each snapshot's .gpgsig with gpgv against this keyring (then
    /// required) [default: the config's `keyring`].
    #[arg(long, value_name = "FILE")]
    keyring: Option<PathBuf>,
    /// Take the snapshot of this mirror date (YYYYMMDD) even if it is older.
    #[arg(long, value_name = "YYYYMMDD")]
    revert: Option<String>,
    /// How many days back to look.
    #[arg(long, value_name = "N", default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=3650))]
    max_age_days: u32,
    /// Keep the downloaded tarball, .md5sum and .gpgsig in this directory.
    #[arg(long, value_name = "DIR")]
    keep_download: Option<PathBuf>,
    /// Skip the md5 and signature checks.
    #[arg(long, conflicts_with = "keyring")]
    no_verify: bool,
    /// Seconds to wait for a connection, and for each read, before a mirror counts as down.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// Accept a snapshot stamped more than a day past this machine's clock
    /// (for a machine whose clock is behind).
    #[arg(long)]
    allow_future: bool,
}

/// Arguments of `snapshot push` and `snapshot fetch`.
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// The git remote: a path, file:// URL, https:// or ssh URL.
    remote: String,
    #[command(flatten)]
    repo: RepoArg,
    /// Overwrite a diverged main and differing tags on the receiving side.
    #[arg(long)]
    force: bool,
}

fn sync(ctx: &Ctx, a: SyncArgs) -> anyhow::Result<ExitCode> {
    use portroot::snapshot::sync::{parse_file_date, sync_snapshot, SyncOptions, SyncOutcome};
    let repo = a.repo.name(ctx)?;
    let revert = a.revert.as_deref().map(parse_file_date).transpose()?;
    if a.no_verify {
        eprintln!("portroot: warning: --no-verify: neither md5 sum nor signature is checked");
    }
    // --mirror replaces the configured list; neither means Gentoo's mirror.
    let mirrors = match a.mirrors.is_empty() {
        true => ctx.config.merged.mirrors.clone().unwrap_or_default(),
        false => a.mirrors,
    };
    let mut opts = SyncOptions::new(mirrors);
    opts.repo = repo;
    // A configured keyring makes signatures required, as --keyring does.
    opts.keyring = match a.no_verify {
        true => None,
        false => a.keyring.or_else(|| ctx.config.merged.keyring.clone()),
    };
    opts.revert = revert;
    opts.max_age_days = a.max_age_days;
    opts.keep_download = a.keep_download;
    opts.verify = !a.no_verify;
    opts.progress = ctx.progress();
    opts.timeout = std::time::Duration::from_secs(a.timeout);
    opts.allow_future = a.allow_future;
    super::signals::clean_up_on_signal(ctx, "downloads removed")?;
    let lock = lock(ctx, &opts.repo, true)?;
    let outcome = sync_snapshot(&ctx.store, &opts, &lock).context("syncing from the mirrors")?;
    match outcome {
        SyncOutcome::UpToDate { file, newest } => {
            println!("no newer snapshot: newest on the mirrors is {file}, newest tag is {newest}");
        }
        SyncOutcome::Fetched {
            mirror,
            file,
            outcome: Outcome::NoNewer { date, commit },
        } => {
            println!(
                "no newer snapshot: {file} from {mirror} is {date}, already imported (commit {})",
                short(commit)
            );
        }
        SyncOutcome::Fetched {
            mirror,
            file,
            outcome: Outcome::Imported(i),
        } => println!("{}", imported(&i, &format!("{file} from {mirror}, "))),
    }
    Ok(ExitCode::SUCCESS)
}

fn push(ctx: &Ctx, a: RemoteArgs) -> anyhow::Result<ExitCode> {
    let repo = a.repo.name(ctx)?;
    let done = snapshot::remote::push(&ctx.store, &repo, &a.remote, a.force)
        .with_context(|| format!("pushing {repo} to {}", a.remote))?;
    print_transfer("pushed", &done);
    Ok(ExitCode::SUCCESS)
}

fn fetch(ctx: &Ctx, a: RemoteArgs) -> anyhow::Result<ExitCode> {
    let repo = a.repo.name(ctx)?;
    super::signals::clean_up_on_signal(ctx, "unfinished fetch removed")?;
    let lock = lock(ctx, &repo, true)?;
    let done = snapshot::remote::fetch(&ctx.store, &repo, &a.remote, a.force, &lock)
        .with_context(|| format!("fetching {repo} from {}", a.remote))?;
    print_transfer("fetched", &done);
    Ok(ExitCode::SUCCESS)
}

fn print_transfer(verb: &str, done: &snapshot::remote::Transfer) {
    if !done.moved_main && done.tags.is_empty() {
        println!("already up to date");
        return;
    }
    let main = if done.moved_main { "main and " } else { "" };
    println!("{verb} {main}{} tag(s)", done.tags.len());
    for t in &done.tags {
        println!("  {t}");
    }
}
