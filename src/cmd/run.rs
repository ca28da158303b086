//! `portroot run`, `shell`, `ps`, `gc` and the hidden sandbox helper.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::Ctx;

/// Arguments of `portroot run`.
#[derive(Debug, Args)]
pub struct RunArgs {}

/// Arguments of `portroot shell`.
#[derive(Debug, Args)]
pub struct ShellArgs {}

/// Arguments of `portroot ps`.
#[derive(Debug, Args)]
pub struct PsArgs {}

/// Arguments of `portroot gc`.
#[derive(Debug, Args)]
pub struct GcArgs {}

/// Hidden helpers re-executed by the runner.
#[derive(Debug, Subcommand)]
pub enum InternalCmd {}

/// `portroot run`.
pub fn run(_ctx: &Ctx, _args: RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("run: not built yet (see issue 4)")
}

/// `portroot shell`.
pub fn shell(_ctx: &Ctx, _args: ShellArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("shell: not built yet (see issue 4)")
}

/// `portroot ps`.
pub fn ps(_ctx: &Ctx, _args: PsArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("ps: not built yet (see issue 4)")
}

/// `portroot gc`.
pub fn gc(_ctx: &Ctx, _args: GcArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("gc: not built yet (see issue 4)")
}

/// Hidden helpers.
pub fn internal(_ctx: &Ctx, cmd: InternalCmd) -> anyhow::Result<ExitCode> {
    match cmd {}
}
