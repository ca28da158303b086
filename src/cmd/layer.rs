//! `portroot layer ...`: named layers, a successful job's copy-on-write upper
//! directory kept so later chroots stack over the stage without a copy.
//!
//! `layer create` is `portroot run` with one job (the same resolution, mount
//! namespace, signal handling and teardown, see `run.rs`); when that job exits
//! 0 and nothing interrupted it, its upper directory is moved into
//! `layers/NAME/` by `portroot_runner::layer`. Anything else leaves no layer.

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use portroot_runner::job::{self, Job};
use portroot_runner::layer::{Layer, LayerStore};

use portroot::run::Finished;

use super::run::{run_batch, Batch, ChrootArgs};
use super::stage::human_bytes;
use super::Ctx;

/// Layer subcommands.
#[derive(Debug, Subcommand)]
pub enum LayerCmd {
    /// Run one job over a stage (and layers); if it exits 0, keep its changes
    /// as a named read-only layer.
    Create(Box<CreateArgs>),
    /// List the layers in the store.
    List(ListArgs),
    /// Remove a layer (refused while a run uses it or a layer builds on it).
    Rm(RmArgs),
    /// Write a layer as one file another store adds by its sha256.
    Export(super::layer_file::ExportArgs),
    /// Add a layer from a file `layer export` wrote (a path or a URL).
    Add(super::layer_file::AddArgs),
}

/// `layer create` arguments.
#[derive(Debug, Args)]
#[command(after_help = "\
The job runs exactly as one job of `portroot run` (bash --login -c CMD, the
tree at TAG read-only, distfiles/ shared, packages into a new unpublished
generation of the binhost unless --binpkgs DIR). If it exits 0, its
overlay upper directory (files added or changed, deletions as whiteouts,
replaced directories as opaque ones) is moved to layers/NAME. If it fails or
is interrupted, nothing is kept. The configuration portroot writes into every
chroot (make.conf lines, repos.conf, resolv.conf) is not part of the layer.

A layer can only be used over the stage and the layers it was built over, in
the same order: use --layer in build order, bottom first.

Examples:
  portroot layer create python --stage stage4 --tag 2026-08-20 -- emerge -1 dev-lang/python
  portroot layer create sci --stage stage4 --layer python -- 'emerge -1 numpy scipy'
  portroot run --stage stage4 --layer python --layer sci --tag 2026-08-20 -- emerge -e @sci")]
pub struct CreateArgs {
    /// The new layer's name.
    #[arg(value_name = "NAME", value_parser = portroot::store::parse_name)]
    name: String,
    /// The stage (name or digest) the job runs over.
    #[arg(long, value_name = "STAGE")]
    stage: String,
    /// The snapshot tag at the portage tree location (default: the newest).
    #[arg(long, value_name = "TAG")]
    tag: Option<String>,
    #[command(flatten)]
    chroot: ChrootArgs,
    /// The command: one word is a shell line, several are quoted and joined.
    #[arg(last = true, value_name = "CMD", required = true)]
    command: Vec<String>,
}

/// `layer list` arguments.
#[derive(Debug, Args)]
#[command(after_help = "\
PARENTS is the stack below the layer, bottom first, ending with the stage.

Examples:
  portroot layer list
  portroot layer list --json | jq '.[].name'")]
pub struct ListArgs {
    /// Print every layer.json as one JSON array.
    #[arg(long)]
    json: bool,
}

/// `layer rm` arguments.
#[derive(Debug, Args)]
#[command(after_help = "\
Refused while a run uses the layer (live, or finished with --keep until
`portroot gc --all`) and while another layer is built over it.

Example:
  portroot layer rm python")]
pub struct RmArgs {
    /// The layer's name.
    #[arg(value_name = "NAME")]
    name: String,
}

/// Run a layer subcommand.
pub fn run(ctx: &Ctx, cmd: LayerCmd) -> anyhow::Result<ExitCode> {
    let layers = LayerStore::new(ctx.store.layers_dir(), ctx.store.tmp_dir());
    match cmd {
        LayerCmd::Create(a) => create(ctx, &layers, *a),
        LayerCmd::List(a) => list(&layers, &a),
        LayerCmd::Export(a) => super::layer_file::export(ctx, &layers, a),
        LayerCmd::Add(a) => super::layer_file::add(ctx, &layers, a),
        LayerCmd::Rm(a) => {
            layers.remove(&a.name, &ctx.store.runs_dir())?;
            if !ctx.quiet {
                println!("removed layer {}", a.name);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn create(ctx: &Ctx, layers: &LayerStore, a: CreateArgs) -> anyhow::Result<ExitCode> {
    let script = job::script_from_words(&a.command)?;
    // Check the stage and the chain before touching the store (the run
    // checks them again, holding them).
    let stage =
        portroot_runner::stage::StageStore::new(ctx.store.stages_dir(), ctx.store.tmp_dir())
            .resolve(&a.stage)?;
    drop(layers.lease(&stage.digest, &a.chroot.layers)?);
    // Refuse a taken name before anything runs, and hold it meanwhile.
    let pending = layers.begin(&a.name)?;
    let tag = match &a.tag {
        Some(t) => t.clone(),
        None => newest_tag(ctx)?,
    };
    let job_name = if job::check_job_name(&a.name).is_ok() {
        a.name.clone()
    } else {
        "layer".to_owned()
    };
    let batch = Batch {
        stage: &a.stage,
        tag: &tag,
        chroot: &a.chroot,
        jobs: vec![Job {
            name: job_name.clone(),
            script: script.clone(),
        }],
        workers: 1,
        keep: false,
        binhost: super::run::binhost(ctx, &a.chroot, None, false),
        publish: false,
    };
    let mut pending = Some(pending);
    let mut created: Option<Layer> = None;
    let code = run_batch(ctx, batch, &mut |done: Finished<'_>| {
        let Some(pending) = pending.take() else {
            return Ok(());
        };
        created = portroot::run::keep_job(layers, pending, &done, &script)
            .with_context(|| format!("creating layer {}", a.name))?;
        Ok(())
    })?;
    if let Some(layer) = created {
        if !ctx.quiet {
            eprintln!(
                "created layer {} ({} files, {}) over {}",
                layer.record.name,
                layer.record.files,
                human_bytes(layer.record.bytes),
                chain_label(&layer)
            );
        }
        return Ok(code);
    }
    if code == ExitCode::SUCCESS {
        bail!("the job did not finish: no layer {} created", a.name);
    }
    eprintln!("portroot: no layer {} created", a.name);
    Ok(code)
}

/// The newest snapshot tag of the main repository.
fn newest_tag(ctx: &Ctx) -> anyhow::Result<String> {
    let tags = portroot::snapshot::list_snapshots(&ctx.store, portroot::store::DEFAULT_REPO)?;
    match tags.last() {
        Some(t) => Ok(t.name.clone()),
        None => bail!("no snapshot tag in repository gentoo: import one or give --tag"),
    }
}

/// `a, b, stage NAME` for the stack below a layer.
fn chain_label(layer: &Layer) -> String {
    layer
        .record
        .parents
        .iter()
        .rev()
        .map(|p| p.name.clone())
        .chain([format!("stage {}", layer.record.stage)])
        .collect::<Vec<_>>()
        .join(" over ")
}

fn list(layers: &LayerStore, a: &ListArgs) -> anyhow::Result<ExitCode> {
    let all = layers.list()?;
    if a.json {
        let records: Vec<_> = all.iter().map(|l| &l.record).collect();
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        println!("no layers (create one with `portroot layer create`)");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 5]> = all
        .iter()
        .map(|l| {
            let mut parents: Vec<String> =
                l.record.parents.iter().map(|p| p.name.clone()).collect();
            parents.push(format!(
                "stage {}",
                l.record.stage_digest.get(..12).unwrap_or("?")
            ));
            [
                l.record.name.clone(),
                parents.join(" < "),
                human_bytes(l.record.bytes),
                l.record.files.to_string(),
                portroot_runner::run::utc_stamp(l.record.created),
            ]
        })
        .collect();
    let header = ["NAME", "PARENTS", "SIZE", "FILES", "CREATED"].map(String::from);
    let mut w = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in w.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        println!(
            "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        );
    }
    Ok(ExitCode::SUCCESS)
}
