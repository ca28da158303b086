//! `portroot config show|example`: what the configuration files set, and a
//! commented example of every key. Loading lives in `portroot::config`.

use std::process::ExitCode;

use clap::Subcommand;

use super::Ctx;
use portroot::config::{DEFAULT_CACHE_SIZE, DEFAULT_THREADS, EXAMPLE};

/// Config subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print the effective configuration and which file set each value.
    #[command(after_help = "\
Reads --config FILE (or $PORTROOT_CONFIG), else /etc/portroot/portroot.toml,
then STORE/config.toml over it key by key; a bad key or value fails here as it
would in any command. Unset keys are shown commented out with their default.

Example:
  portroot config show
  # read, later overriding earlier:
  #   /etc/portroot/portroot.toml
  ...
  [run]
  jobs = 16  # /etc/portroot/portroot.toml
  # layout: \"modern\" (default)")]
    Show,
    /// Print a commented example file documenting every key.
    #[command(after_help = "Example:\n  portroot config example > /etc/portroot/portroot.toml")]
    Example,
}

/// Run a config subcommand.
pub fn run(ctx: &Ctx, cmd: ConfigCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCmd::Show => {
            let store = ctx.store.clone();
            print!("{}", ctx.config.show(&|key| default_of(key, &store)));
        }
        ConfigCmd::Example => print!("{EXAMPLE}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The built-in default of a dotted key, as `config show` describes it.
fn default_of(key: &str, store: &portroot::store::Store) -> String {
    match key {
        "mirrors" => "none".into(),
        "keyring" => "none, signatures are not checked".into(),
        "repo" => format!("\"{}\"", portroot::store::DEFAULT_REPO),
        "run.layout" => "\"modern\"".into(),
        "run.network" => "\"host\"".into(),
        "run.jobs" => format!(
            "{} (the number of CPUs)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        "run.features" | "run.make_conf_lines" | "run.local_mirror" | "run.tmpfs" => "none".into(),
        "run.memory" | "run.cpus" | "run.pids" => "unlimited".into(),
        "run.distfiles" => format!("\"{}\"", store.distfiles_dir().display()),
        "run.binpkgs" => "none, each run writes a generation of run.binhost".into(),
        "run.binhost" => format!(
            "\"{}\" ({}), none if run.binpkgs is set",
            portroot::store::DEFAULT_BINHOST,
            store.binpkgs_dir().display()
        ),
        "mount.cache_size" => format!("{DEFAULT_CACHE_SIZE} (256M)"),
        "mount.threads" => DEFAULT_THREADS.to_string(),
        _ => "built in".into(),
    }
}
