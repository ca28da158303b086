//! `portroot binhost`: the generations of a binhost (see
//! `portroot_runner::binhost`): list, publish, roll back, compare, keep and
//! collect them.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use portroot_runner::binhost::{self, Binhost};
use portroot_runner::run as runs;

use super::Ctx;

/// Which binhost a subcommand works on.
#[derive(Debug, Args)]
pub struct BinhostArg {
    /// The binhost: a name under the store or an absolute directory
    /// [default: the config's `run.binhost`, else binpkgs].
    #[arg(long, value_name = "NAME|DIR", value_parser = portroot::store::parse_binhost)]
    binhost: Option<PathBuf>,
}

/// `portroot binhost ...`.
#[derive(Debug, Subcommand)]
pub enum BinhostCmd {
    /// List the generations: run, time, packages, published, kept; `*` marks current.
    #[command(after_help = "Example:\n  portroot binhost list")]
    List {
        #[command(flatten)]
        host: BinhostArg,
        /// Print the records as one JSON array instead.
        #[arg(long)]
        json: bool,
    },
    /// Point `current` at the generation a run wrote, atomically.
    #[command(after_help = "\
Only a run that ended ok (every job succeeded, nothing refused) is published
unless --force. The binhost is the one the run wrote into.

Example:
  portroot binhost publish 20261206-204609-8e36")]
    Publish {
        #[command(flatten)]
        host: BinhostArg,
        /// The run (its generation has its id).
        #[arg(value_name = "RUN-ID", value_parser = portroot::store::parse_name)]
        run: String,
        /// Publish a run that failed, too.
        #[arg(long)]
        force: bool,
    },
    /// Point `current` back at the generation published before it.
    #[command(after_help = "Example:\n  portroot binhost rollback")]
    Rollback {
        #[command(flatten)]
        host: BinhostArg,
    },
    /// Packages added, removed and rebuilt from generation A to B (`current` names current).
    #[command(after_help = "Example:\n  portroot binhost diff current 20261206-204609-8e36")]
    Diff {
        #[command(flatten)]
        host: BinhostArg,
        /// The older generation.
        a: String,
        /// The newer generation.
        b: String,
    },
    /// Keep a generation from `binhost gc`.
    Keep {
        #[command(flatten)]
        host: BinhostArg,
        /// The generation.
        generation: String,
    },
    /// Let `binhost gc` remove a kept generation again.
    Unkeep {
        #[command(flatten)]
        host: BinhostArg,
        /// The generation.
        generation: String,
    },
    /// Remove generations not kept, not current, not recently published, not in use.
    #[command(after_help = "\
Keeps current, the generations published last (--keep, current counted),
every kept one and those of live runs; removes the rest, unpublished ones
included.

Example:
  portroot binhost gc --keep 5")]
    Gc {
        #[command(flatten)]
        host: BinhostArg,
        /// How many of the generations published last stay.
        #[arg(long, value_name = "N", default_value_t = 2)]
        keep: usize,
    },
}

/// `portroot binhost`.
pub fn run(ctx: &Ctx, cmd: BinhostCmd) -> anyhow::Result<ExitCode> {
    let open = |h: &BinhostArg| {
        let spec = h
            .binhost
            .clone()
            .or_else(|| ctx.config.merged.run.binhost.clone())
            .unwrap_or_else(|| PathBuf::from(portroot::store::DEFAULT_BINHOST));
        Binhost::new(ctx.store.binhost_dir(&spec))
    };
    match cmd {
        BinhostCmd::List { host, json } => list(&open(&host), json),
        BinhostCmd::Publish { host, run, force } => {
            // The run's own binhost unless one is named.
            let named = host.binhost.is_some().then(|| open(&host));
            publish(ctx, named.as_ref(), &run, force)
        }
        BinhostCmd::Rollback { host } => {
            let id = open(&host).rollback()?;
            println!("current is {id}");
            Ok(ExitCode::SUCCESS)
        }
        BinhostCmd::Diff { host, a, b } => diff(&open(&host), &a, &b),
        BinhostCmd::Keep { host, generation } => {
            open(&host).set_kept(&generation, true)?;
            Ok(ExitCode::SUCCESS)
        }
        BinhostCmd::Unkeep { host, generation } => {
            open(&host).set_kept(&generation, false)?;
            Ok(ExitCode::SUCCESS)
        }
        BinhostCmd::Gc { host, keep } => gc(ctx, &open(&host), keep),
    }
}

fn list(host: &Binhost, json: bool) -> anyhow::Result<ExitCode> {
    let all = host.list()?;
    let current = host.current()?;
    if json {
        let items: Vec<serde_json::Value> = all
            .iter()
            .map(|m| serde_json::json!({"current": Some(&m.id) == current.as_ref(), "generation": m}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "  {:<22}  {:<22}  {:<16}  {:>8}  {:<16}  KEPT",
        "GENERATION", "RUN", "CREATED", "PACKAGES", "PUBLISHED"
    );
    for m in &all {
        let mark = if Some(&m.id) == current.as_ref() {
            "*"
        } else {
            " "
        };
        println!(
            "{mark} {:<22}  {:<22}  {:<16}  {:>8}  {:<16}  {}",
            m.id,
            m.run.as_deref().unwrap_or("-"),
            runs::utc_stamp(m.created),
            m.packages.map_or_else(|| "-".into(), |n| n.to_string()),
            m.published.map_or_else(|| "-".into(), runs::utc_stamp),
            if m.kept { "kept" } else { "-" },
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn publish(ctx: &Ctx, named: Option<&Binhost>, id: &str, force: bool) -> anyhow::Result<ExitCode> {
    let dir = ctx.store.runs_dir().join(id);
    if !dir.join("run.json").is_file() {
        bail!("no run {id} in the store (`portroot runs` lists them)");
    }
    let record = runs::read_record(&dir)?;
    let Some(gen) = &record.binhost else {
        bail!("run {id} wrote no binhost generation (it ran without --binhost)");
    };
    let host = Binhost::new(&gen.root);
    if let Some(named) = named.filter(|n| n.root() != host.root()) {
        bail!(
            "run {id} wrote into the binhost {}, not {}",
            gen.root.display(),
            named.root().display()
        );
    }
    match record.ended() {
        Some("ok") => {}
        None => bail!("run {id} has not ended"),
        Some(state) if !force => bail!("run {id} ended {state}; --force publishes it anyway"),
        Some(_) => {}
    }
    host.publish(&gen.generation)?;
    println!("current is {}", gen.generation);
    Ok(ExitCode::SUCCESS)
}

/// `current` or a generation's id, checked.
fn resolve(host: &Binhost, name: &str) -> anyhow::Result<String> {
    if name == "current" {
        return match host.current()? {
            Some(id) => Ok(id),
            None => bail!("nothing published in {} yet", host.root().display()),
        };
    }
    host.meta(name)?;
    Ok(name.to_owned())
}

fn diff(host: &Binhost, a: &str, b: &str) -> anyhow::Result<ExitCode> {
    let (a, b) = (resolve(host, a)?, resolve(host, b)?);
    let d = binhost::diff(
        &binhost::packages(&host.path(&a))?,
        &binhost::packages(&host.path(&b))?,
    );
    for (mark, list) in [("+", &d.added), ("-", &d.removed), ("~", &d.rebuilt)] {
        for cpv in list {
            println!("{mark} {cpv}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn gc(ctx: &Ctx, host: &Binhost, keep: usize) -> anyhow::Result<ExitCode> {
    let live: HashSet<String> = runs::list_runs(&ctx.store.runs_dir())?
        .into_iter()
        .filter(|r| r.live)
        .map(|r| r.id)
        .collect();
    let removed = host.gc(keep, &|m| m.run.as_ref().is_some_and(|r| live.contains(r)))?;
    for id in &removed {
        tracing::info!(generation = %id, "removed");
    }
    if !ctx.quiet {
        eprintln!("removed {} generation(s)", removed.len());
    }
    Ok(ExitCode::SUCCESS)
}
