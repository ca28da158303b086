//! `portroot snapshot ...`: import, list and diff portage snapshots.

use std::process::ExitCode;

use clap::Subcommand;

use super::Ctx;

/// Snapshot subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// List the snapshot tags, oldest first.
    List,
}

/// Run a snapshot subcommand.
pub fn run(_ctx: &Ctx, cmd: SnapshotCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        SnapshotCmd::List => anyhow::bail!("snapshot list: not built yet (see issue 2)"),
    }
}
