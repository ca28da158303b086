//! `portroot mount` and `portroot umount`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::Ctx;

/// Arguments of `portroot mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// Where to mount.
    pub mountpoint: PathBuf,
}

/// Arguments of `portroot umount`.
#[derive(Debug, Args)]
pub struct UmountArgs {
    /// What to unmount.
    pub mountpoint: PathBuf,
}

/// `portroot mount`.
pub fn mount(_ctx: &Ctx, _args: MountArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("mount: not built yet (see issue 3)")
}

/// `portroot umount`.
pub fn umount(_ctx: &Ctx, _args: UmountArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("umount: not built yet (see issue 3)")
}
