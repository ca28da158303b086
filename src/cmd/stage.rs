//! `portroot stage ...`: stage tarballs unpacked once into the store.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use portroot::store::{Store, EXPORT_PARTIAL};
use portroot_runner::layer::{LayerStore, LowerView};
use portroot_runner::stage::export::export_tree_noting;
use portroot_runner::stage::{Stage, StageStore};

use super::Ctx;

/// Stage subcommands.
#[derive(Debug, Subcommand)]
pub enum StageCmd {
    /// Unpack a stage3/stage4 tarball once into the store.
    #[command(after_help = "\
The tarball (.tar.xz, .tar.bz2/.tbz2, .tar.gz, .tar.zst or .tar, recognised by
content) is unpacked into stages/<sha256>/rootfs keeping numeric owners, modes
(setuid/setgid), xattrs (file capabilities), hardlinks, device nodes, fifos and
mtimes. Adding the same file again is instant. Entries that would land outside
the stage root are refused and nothing is left behind.

A URL (http://, https://, file://) is downloaded into the store's tmp/ first,
then unpacked, and the download removed. With --sha256 the stage is added only
if the tarball has that digest: a download is checked as it arrives, a file as
it is unpacked; on a mismatch nothing is kept. A stage's digest is the sha256
of its tarball, so a build server can name the exact stage it needs.

Examples:
  portroot stage add stage4-amd64-2026.tar.xz          # named stage4-amd64-2026
  portroot stage add --name stage4 stage4-amd64-2026.tar.xz
  portroot stage add https://builds.example/stage4.tar.xz --sha256 3f2a…(64 hex)")]
    Add(AddArgs),
    /// List the stages in the store.
    #[command(after_help = "Example:\n  portroot stage list")]
    List,
    /// Remove a stage (refused while a run, a kept chroot or a layer uses it).
    #[command(after_help = "\
NAME is a stage name or a digest (prefix). Every name pointing at the stage
goes with it.

Example:
  portroot stage rm stage4")]
    Rm(RmArgs),
    /// Write a stage, with layers applied, as a stage4 tarball (.tar.xz).
    #[command(after_help = "\
The flattened view (the stage with each --layer over it, deletions applied)
is written as a PAX tar.xz with numeric owners, modes (setuid/setgid),
mtimes, xattrs (file capabilities), hardlinks, symlinks, device nodes and
fifos: `portroot stage add` on another build server gives the same tree.
The file appears only when complete.

Examples:
  portroot stage export --stage stage4 stage4.tar.xz
  portroot stage export --stage stage4 --layer python --layer sci stage4-sci.tar.xz")]
    Export(ExportArgs),
}

/// `stage export` arguments.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The stage's name or digest (prefix).
    #[arg(long, value_name = "STAGE")]
    stage: String,
    /// A layer over the stage; repeat in build order, bottom first.
    #[arg(long = "layer", value_name = "LAYER")]
    layers: Vec<String>,
    /// The tarball to write (xz-compressed).
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

/// `stage add` arguments.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The stage tarball: a path, or an http://, https:// or file:// URL to
    /// download first.
    #[arg(value_name = "FILE|URL")]
    file: PathBuf,
    /// The name to give it (default: the file name without .tar.xz etc.).
    #[arg(long, value_name = "NAME", value_parser = portroot::store::parse_name)]
    name: Option<String>,
    /// The tarball's sha256 (64 hex digits): the stage is added only if the
    /// bytes read have this digest; otherwise nothing is kept.
    #[arg(long, value_name = "HEX", value_parser = parse_sha256)]
    sha256: Option<String>,
    /// Seconds a download may wait to connect, for the response, or for
    /// each read.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
}

/// clap's value parser for `--sha256`: 64 hex digits, kept in lower case.
pub(super) fn parse_sha256(s: &str) -> Result<String, String> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err("a sha256 is 64 hex digits".into())
    }
}

/// `stage rm` arguments.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// The stage's name or digest (prefix).
    #[arg(value_name = "NAME")]
    name: String,
}

/// Run a stage subcommand.
pub fn run(ctx: &Ctx, cmd: StageCmd) -> anyhow::Result<ExitCode> {
    let stages = StageStore::new(ctx.store.stages_dir(), ctx.store.tmp_dir());
    match cmd {
        StageCmd::Add(a) => add(ctx, &stages, a),
        StageCmd::List => list(&stages),
        StageCmd::Export(a) => export(ctx, &stages, a),
        StageCmd::Rm(a) => {
            // A signal once the stage is out of the store finishes deleting
            // its files before the exit (they are `removing-PID-*` in tmp/).
            super::signals::clean_up_on_signal(ctx, "the stage's files removed")?;
            let stage = stages.resolve(&a.name)?;
            // Live runs hold the stage's lock; finished runs that kept their
            // chroots (`--keep`) hold nothing but still sit on it.
            let users = portroot_runner::run::runs_using(&ctx.store.runs_dir(), &stage.rootfs)?;
            if let Some(run) = users.first() {
                anyhow::bail!(
                    "stage {} is busy: run {run} uses it (`portroot gc --all` removes finished runs)",
                    a.name
                );
            }
            stages.remove(&a.name)?;
            println!(
                "removed {} (sha256 {})",
                label(&stage),
                stage.short_digest()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn add(ctx: &Ctx, stages: &StageStore, a: AddArgs) -> anyhow::Result<ExitCode> {
    super::signals::clean_up_on_signal(ctx, "unfinished stage removed")?;
    let start = Instant::now();
    // A URL is downloaded into a scratch directory of ours first (removed
    // when this returns, by the signal handler on Ctrl-C, by `gc` after a
    // kill), hashed as it comes.
    let source = a.file.to_str().filter(|s| portroot::http::is_url(s));
    let download = match source {
        Some(url) => Some(download(ctx, url, &a)?),
        None => None,
    };
    let tarball = download
        .as_ref()
        .map_or(a.file.as_path(), |(_, path)| path.as_path());
    let bar = if ctx.progress() {
        let len = std::fs::metadata(tarball).map(|m| m.len()).unwrap_or(0);
        let bar = ProgressBar::new(len).with_style(
            ProgressStyle::with_template(
                "{spinner} unpacking {msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} ({eta})",
            )
            .expect("invariant: the progress template is valid")
            .progress_chars("=> "),
        );
        bar.set_message(
            tarball
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        Some(bar)
    } else {
        None
    };
    let progress = |read: u64| {
        if let Some(bar) = &bar {
            bar.set_position(read);
        }
    };
    // Every error of the stage store names the tarball or the path concerned.
    let added = stages.add_tarball(tarball, a.name.as_deref(), a.sha256.as_deref(), &progress);
    drop(download);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let added = added?;
    let s = &added.stage;
    if added.unpacked {
        println!(
            "added {} (sha256 {}…): {} files, {} in {:.1} s",
            label(s),
            s.short_digest(),
            s.files,
            human_bytes(s.bytes),
            start.elapsed().as_secs_f64()
        );
    } else if let Some(name) = &added.named {
        println!(
            "{} already present (sha256 {}…): now also named {name}",
            s.source,
            s.short_digest()
        );
    } else {
        println!(
            "{} already present (sha256 {}…): nothing to do",
            label(s),
            s.short_digest()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Download the stage at `url` into a scratch directory in the store's
/// `tmp/`, named as the URL's last segment; refuse it at once if `--sha256`
/// says otherwise. The directory goes when the returned value is dropped.
fn download(ctx: &Ctx, url: &str, a: &AddArgs) -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let name = portroot::http::file_name(url)
        .filter(|n| !n.starts_with('.') && !n.contains('%'))
        .ok_or_else(|| anyhow::anyhow!("{url}: no file name at the end of the URL"))?;
    let tmp = ctx.store.tmp_dir();
    Store::ensure(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    // `stage-PID-`: the scratch prefix the signal handler and `gc` know.
    let dir = tempfile::Builder::new()
        .prefix(&format!("stage-{}-download-", std::process::id()))
        .tempdir_in(&tmp)
        .with_context(|| format!("creating a directory in {}", tmp.display()))?;
    let dest = dir.path().join(name);
    let bar = ctx.progress().then(|| {
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template(
                "{spinner} downloading {msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec})",
            )
            .expect("invariant: the progress template is valid")
            .progress_chars("=> "),
        );
        bar.set_message(name.to_owned());
        bar
    });
    let agent = portroot::http::agent(std::time::Duration::from_secs(a.timeout));
    let got = portroot::http::download(&agent, url, &dest, &|read, len| {
        if let Some(bar) = &bar {
            if let Some(len) = len {
                bar.set_length(len);
            }
            bar.set_position(read);
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let got = got.context("downloading the stage")?;
    if let Some(want) = &a.sha256 {
        if &got.sha256 != want {
            anyhow::bail!(
                "{url}: sha256 is {}, expected {want}; nothing added",
                got.sha256
            );
        }
    }
    tracing::info!(%url, bytes = got.bytes, sha256 = %got.sha256, "stage downloaded");
    Ok((dir, dest))
}

fn export(ctx: &Ctx, stages: &StageStore, a: ExportArgs) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    if a.file.is_dir() {
        anyhow::bail!("{} is a directory", a.file.display());
    }
    let stage = stages.lease(&a.stage)?;
    let layers = LayerStore::new(ctx.store.layers_dir(), ctx.store.tmp_dir())
        .lease(&stage.stage.digest, &a.layers)?;
    let mut lowers = layers.lowers_top_first();
    lowers.push(stage.stage.rootfs.clone());
    // Over layers, the view is an overlay mount: keep it in a mount namespace
    // of our own (still single-threaded here), so it dies with us.
    let layered = lowers.len() > 1;
    if layered {
        portroot::run::private_mount_namespace()?;
    }
    super::signals::clean_up_on_signal(ctx, "unfinished export removed")?;
    let (scratch, _lock) = export_scratch(ctx)?;
    let view_dir = if layered {
        scratch.path().join("view")
    } else {
        PathBuf::new()
    };
    let partial = scratch.path().join(EXPORT_PARTIAL);
    let note = |path: &Path| -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::path::absolute(path)?;
        let new = scratch.path().join(format!("{EXPORT_PARTIAL}.new"));
        std::fs::write(&new, path.as_os_str().as_bytes())?;
        std::fs::rename(&new, &partial)
    };
    let view = LowerView::mount(&lowers, &view_dir)?;
    let bar = ctx.progress().then(|| {
        ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} exporting: {msg} ({elapsed})")
                .expect("invariant: the progress template is valid"),
        )
    });
    let progress = |entries: u64, bytes: u64| {
        if let Some(bar) = &bar {
            if entries % 256 == 0 {
                bar.set_message(format!("{entries} files, {}", human_bytes(bytes)));
                bar.tick();
            }
        }
    };
    let stats = export_tree_noting(view.path(), &a.file, &note, &progress);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    drop(view);
    let stats = stats?;
    if !ctx.quiet {
        println!(
            "exported {} to {}: {} files, {} ({} compressed) in {:.1} s",
            label(&stage.stage),
            a.file.display(),
            stats.entries,
            human_bytes(stats.bytes),
            human_bytes(stats.tarball_bytes),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Our scratch directory, named with our PID (see `Store::scratch_prefix`):
/// the view's mount point, and the record of the temporary tarball written
/// beside the output, for a signal's clean-up or `gc`'s. Returned locked.
fn export_scratch(
    ctx: &Ctx,
) -> anyhow::Result<(tempfile::TempDir, nix::fcntl::Flock<std::fs::File>)> {
    use anyhow::Context;
    let tmp = ctx.store.tmp_dir();
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix(&Store::scratch_prefix("export"))
        .tempdir_in(&tmp)
        .with_context(|| format!("creating a directory in {}", tmp.display()))?;
    // Held while we export, so `gc` (the layer store's, which knows these
    // directories by lock) leaves the scratch directory alone.
    let lock = nix::fcntl::Flock::lock(
        std::fs::File::open(scratch.path())
            .with_context(|| format!("opening {}", scratch.path().display()))?,
        nix::fcntl::FlockArg::LockExclusive,
    )
    .map_err(|(_, e)| e)
    .with_context(|| format!("locking {}", scratch.path().display()))?;
    Ok((scratch, lock))
}

fn list(stages: &StageStore) -> anyhow::Result<ExitCode> {
    let all = stages.list()?;
    if all.is_empty() {
        println!("no stages (add one with `portroot stage add FILE`)");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 5]> = all
        .iter()
        .map(|s| {
            [
                if s.names.is_empty() {
                    "-".to_owned()
                } else {
                    s.names.join(",")
                },
                s.short_digest().to_owned(),
                s.files.to_string(),
                human_bytes(s.bytes),
                utc_date(s.added),
            ]
        })
        .collect();
    let header = ["NAME", "DIGEST", "FILES", "SIZE", "ADDED (UTC)"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        format!(
            "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
        )
    };
    println!("{}", line(header));
    for row in &rows {
        println!("{}", line(row.each_ref().map(String::as_str)));
    }
    Ok(ExitCode::SUCCESS)
}

/// How a stage is called in messages: its names, else its source file.
fn label(s: &Stage) -> String {
    if s.names.is_empty() {
        s.source.clone()
    } else {
        s.names.join(",")
    }
}

/// Decimal units, one decimal: `1.2 GB`, `512 B`.
pub(super) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 999.95 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `YYYY-MM-DD HH:MM` in UTC, from seconds since the epoch.
fn utc_date(secs: u64) -> String {
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .format("%Y-%m-%d %H:%M")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_decimal_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_200), "1.2 kB");
        assert_eq!(human_bytes(1_234_567_890), "1.2 GB");
        assert_eq!(human_bytes(999_999), "1.0 MB");
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00");
        // `date -u -d @1787359500`: Sat Aug 22 00:45:00 UTC 2026.
        assert_eq!(utc_date(1_787_359_500), "2026-08-22 00:45");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00");
    }
}
