//! `portroot stage ...`: stage tarballs unpacked once into the store.

use std::process::ExitCode;

use clap::Subcommand;

use super::Ctx;

/// Stage subcommands.
#[derive(Debug, Subcommand)]
pub enum StageCmd {
    /// List the stages in the store.
    List,
}

/// Run a stage subcommand.
pub fn run(_ctx: &Ctx, cmd: StageCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        StageCmd::List => anyhow::bail!("stage list: not built yet (see issue 4)"),
    }
}
