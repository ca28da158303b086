//! `portroot layer export` and `layer add`: a layer as one file that another
//! store (a Slurm node) adds by its sha256. The format and the checks are
//! `portroot_runner::layer::file`'s; here the download, hashed as it comes,
//! and the messages.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use portroot::store::Store;
use portroot_runner::layer::{file, LayerStore};

use super::stage::{human_bytes, parse_sha256};
use super::Ctx;

/// `layer export` arguments.
#[derive(Debug, Args)]
#[command(after_help = "\
Writes the layer's layer.json and its upper directory (whiteouts and opaque
directories kept as overlayfs reads them) as a PAX tar.xz, entries sorted:
two exports of one layer are the same file. Prints its sha256 (alone with -q),
which is also recorded in the layer's directory: `portroot run --scheduler
slurm --layer-url NAME=URL` pins the layer's file by it.

Example:
  portroot layer export python -o /srv/exports/python.layer.tar.xz")]
pub struct ExportArgs {
    /// The layer's name.
    #[arg(value_name = "NAME")]
    name: String,
    /// The file to write.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    file: PathBuf,
}

/// `layer add` arguments.
#[derive(Debug, Args)]
#[command(after_help = "\
Adds a layer written by `layer export`, under its recorded name, creation id
and parents. A URL (http://, https://, file://) or a file is copied into the
store's tmp/ first, hashed as it comes; with --sha256 a mismatch leaves
nothing. Refused, leaving nothing, if a parent layer is missing (add parents
first) or the name holds another layer; adding a layer that is already there
(same id) does nothing.

Example:
  portroot layer add https://builds.example/python.layer.tar.xz --sha256 3f2a…(64 hex)")]
pub struct AddArgs {
    /// The export: a path, or an http://, https:// or file:// URL.
    #[arg(value_name = "FILE|URL")]
    source: String,
    /// The file's sha256 (64 hex digits): added only if the bytes read have it.
    #[arg(long, value_name = "HEX", value_parser = parse_sha256)]
    sha256: Option<String>,
    /// Seconds a download may wait to connect, for the response, or for
    /// each read.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
}

/// `portroot layer export NAME -o FILE`.
pub fn export(ctx: &Ctx, layers: &LayerStore, a: ExportArgs) -> anyhow::Result<ExitCode> {
    if a.file.is_dir() {
        anyhow::bail!("{} is a directory", a.file.display());
    }
    // Held with its chain while read: a removal is refused meanwhile.
    let layer = layers.get(&a.name)?;
    let mut chain: Vec<String> = layer
        .record
        .parents
        .iter()
        .map(|p| p.name.clone())
        .collect();
    chain.push(a.name.clone());
    let held = layers.lease(layer.record.stage_digest.as_str(), &chain)?;
    let lease = held
        .layers
        .last()
        .context("invariant: the lease holds the layer")?;
    let (stats, digest) = file::export(lease, &a.file)?;
    if ctx.quiet {
        println!("{digest}");
    } else {
        println!(
            "exported layer {} (id {}) to {}: {} files, {} ({} compressed)\nsha256 {digest}",
            a.name,
            lease.record.id,
            a.file.display(),
            stats.entries,
            human_bytes(stats.bytes),
            human_bytes(stats.tarball_bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `portroot layer add FILE|URL [--sha256 HEX]`.
pub fn add(ctx: &Ctx, layers: &LayerStore, a: AddArgs) -> anyhow::Result<ExitCode> {
    super::signals::clean_up_on_signal(ctx, "unfinished layer removed")?;
    let url = if portroot::http::is_url(&a.source) {
        a.source.clone()
    } else {
        let abs =
            std::path::absolute(&a.source).with_context(|| format!("resolving {}", a.source))?;
        format!("file://{}", abs.display())
    };
    let tmp = ctx.store.tmp_dir();
    Store::ensure(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let dir = tempfile::Builder::new()
        .prefix(&Store::scratch_prefix("fetch"))
        .tempdir_in(&tmp)
        .with_context(|| format!("creating a directory in {}", tmp.display()))?;
    let dest = dir.path().join("layer.tar");
    let agent = portroot::http::agent(std::time::Duration::from_secs(a.timeout));
    let got = portroot::http::download(&agent, &url, &dest, &|_, _| {})
        .with_context(|| format!("reading {}", a.source))?;
    if let Some(want) = &a.sha256 {
        if &got.sha256 != want {
            anyhow::bail!(
                "{}: sha256 is {}, expected {want}; nothing added",
                a.source,
                got.sha256
            );
        }
    }
    let added = layers.add_export(&dest, &got.sha256)?;
    drop(dir);
    let r = &added.layer.record;
    if added.unpacked {
        println!(
            "added layer {} (id {}, sha256 {}…): {} files, {}",
            r.name,
            r.id,
            &got.sha256[..12],
            r.files,
            human_bytes(r.bytes)
        );
    } else {
        println!(
            "layer {} (id {}) already present: nothing to do",
            r.name, r.id
        );
    }
    Ok(ExitCode::SUCCESS)
}
