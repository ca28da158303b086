//! The subcommands. Each module owns its clap arguments and turns them into calls
//! into the library crates; nothing here is reused by tests, which drive the
//! real binary instead.

pub mod binhost;
pub mod config;
pub mod demo;
pub mod layer;
pub mod layer_file;
pub mod mount;
pub mod run;
pub mod runs;
pub mod signals;
pub mod slurm;
pub mod snapshot;
pub mod stage;

use portroot::store::Store;

/// What every subcommand gets from the global options.
#[derive(Debug)]
pub struct Ctx {
    /// The store all commands read and write.
    pub store: Store,
    /// `--quiet`: no progress bars.
    pub quiet: bool,
    /// Whether the store was named (`--store` or `PORTROOT_STORE`) rather
    /// than left at its default.
    pub store_given: bool,
    /// The configuration files' defaults, loaded once in `main`; each command
    /// takes a default as `flag.or(config).unwrap_or(built-in)`.
    pub config: portroot::config::Loaded,
}

impl Ctx {
    /// The store repository served as the gentoo tree: the config's `repo`,
    /// else the default.
    pub fn main_repo(&self) -> String {
        self.config
            .merged
            .repo
            .clone()
            .unwrap_or_else(|| portroot::store::DEFAULT_REPO.to_owned())
    }
}

impl Ctx {
    /// Whether to draw progress bars: on a terminal, unless `--quiet`.
    pub fn progress(&self) -> bool {
        use std::io::IsTerminal;
        !self.quiet && std::io::stderr().is_terminal()
    }
}
